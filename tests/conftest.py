"""Shared test setup.

- Markers ``integration`` (the real default model) and ``browser`` (headless Chromium) are declared once, in
  pyproject.toml's ``[tool.pytest.ini_options]``.
- Every test runs with ``STEERING_EXPLORER_CACHE`` pointing at a per-session temporary folder, so no test writes to
  the user's cache, except integration tests: they use the real cache (the default model is assembled and
  dequantised once, about a minute, and then loaded from there), through the ``real_cache`` fixture.
- Torch runs single-threaded (``STEERING_EXPLORER_TEST_THREADS`` overrides): on a shared 2-core machine, OpenMP
  threads spinning against other processes make the tiny model ~50x slower.
- ``tiny`` is the session-wide seeded ``tiny-random`` handle (3 blocks, hidden 64). Tests must not mutate it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

_THREADS = os.environ.get("STEERING_EXPLORER_TEST_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", _THREADS)

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # allow running without an installed package
    sys.path.insert(0, str(ROOT))

CACHE_ENV = "STEERING_EXPLORER_CACHE"
_REAL_CACHE: str | None = os.environ.get(CACHE_ENV)
_TMP_CACHE: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _TMP_CACHE
    if _TMP_CACHE is None:
        _TMP_CACHE = Path(tempfile.mkdtemp(prefix="steering-explorer-test-cache-"))
        # set at configure time so subprocesses (app / browser tests) inherit it as well
        os.environ[CACHE_ENV] = str(_TMP_CACHE)
    import torch

    torch.set_num_threads(int(_THREADS))


def pytest_unconfigure(config: pytest.Config) -> None:
    global _TMP_CACHE
    if _TMP_CACHE is not None:
        shutil.rmtree(_TMP_CACHE, ignore_errors=True)
        _TMP_CACHE = None
    if _REAL_CACHE is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = _REAL_CACHE


def _use_real_cache(mp: pytest.MonkeyPatch) -> None:
    if _REAL_CACHE is None:
        mp.delenv(CACHE_ENV, raising=False)
    else:
        mp.setenv(CACHE_ENV, _REAL_CACHE)


@pytest.fixture(autouse=True)
def _cache_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests: the session's temporary cache. Integration tests: the user's real cache."""
    if request.node.get_closest_marker("integration"):
        _use_real_cache(monkeypatch)
    elif _TMP_CACHE is not None:
        monkeypatch.setenv(CACHE_ENV, str(_TMP_CACHE))


@pytest.fixture(scope="module")
def real_cache():
    """The user's real cache folder for module-scoped fixtures of integration tests (undone afterwards)."""
    with pytest.MonkeyPatch.context() as mp:
        _use_real_cache(mp)
        yield os.environ.get(CACHE_ENV)


@pytest.fixture(scope="session")
def test_cache_dir() -> Path:
    assert _TMP_CACHE is not None
    return _TMP_CACHE


@pytest.fixture(scope="session")
def tiny():
    """The seeded tiny-random handle, shared by the session (do not mutate)."""
    from engine.models import load_model

    return load_model("tiny-random")


def _hook_counts(handle) -> list[tuple[int, int]]:
    return [(len(b._forward_pre_hooks), len(b._forward_hooks)) for b in handle.layers]


@pytest.fixture(scope="session")
def hook_counts():
    """A function: handle -> [(forward pre-hooks, forward hooks)] for every decoder block."""
    return _hook_counts


@pytest.fixture
def no_hook_leak(tiny):
    """Asserts the test leaves exactly the hooks it found on the tiny model's blocks."""
    before = _hook_counts(tiny)
    yield
    assert _hook_counts(tiny) == before, "a test left hooks registered on the shared model"


def check_template_positions(handle, instruction: str, last: str) -> None:
    """The ChatML template's positions on a real Qwen tokenizer: t_inst is the instruction's last token (``last``),
    followed by ``<|im_end|>\n``; t_post_inst is the final ``\n`` after ``<|im_start|>assistant``; the ids equal the
    tokenizer's own chat-template rendering. Shared by the integration tests of every Qwen model."""
    from engine.positions import locate

    p = locate(handle.tokenizer, instruction)
    tok = handle.tokenizer
    assert tok.decode([p.input_ids[p.t_inst]]) == last
    assert p.t_post_inst == p.n_tokens - 1
    assert tok.decode([p.input_ids[p.t_post_inst]]) == "\n"
    assert tok.decode(list(p.input_ids[p.t_post_inst - 2 : p.t_post_inst])) == "<|im_start|>assistant"
    assert tok.decode(list(p.input_ids[p.t_inst + 1 : p.t_inst + 3])) == "<|im_end|>\n"
    assert tok.decode(list(p.input_ids[p.inst_start : p.t_inst + 1])).strip() == instruction
    assert p.input_ids == tuple(
        tok.apply_chat_template(
            [{"role": "user", "content": instruction}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )


@pytest.fixture(autouse=True)
def _no_umap_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's background UMAP compilation (~20 s holding the GIL) would slow whichever AppTest runs beside it;
    tests/test_umap_warmup.py turns it back on where it is the subject."""
    monkeypatch.setenv("STEERING_EXPLORER_UMAP_WARMUP", "0")


@pytest.fixture(autouse=True)
def _auto_dtype_is_float32(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests see ``dtype="auto"`` as float32 whatever the CPU (test_models checks the bfloat16 choice with mocked
    CPU flags); integration tests keep the machine's real answer."""
    if not request.node.get_closest_marker("integration"):
        import engine.models.core as core

        monkeypatch.setattr(core, "CPUINFO", Path("/nonexistent/cpuinfo"))


# ------------------------------------------------------------------------------------------------ the command line
# the variables main() sets for itself (setdefault); the fixture puts them back so no test leaks them
_MAIN_ENV = ("TOKENIZERS_PARALLELISM", "TRANSFORMERS_VERBOSITY", "HF_HUB_VERBOSITY")


@dataclass
class Run:
    """One command-line run: exit status, stdout, stderr (shared by test_cli and test_battery_cli)."""

    rc: int
    out: str
    err: str

    def json(self):
        """The one JSON document on stdout (fails on anything else, e.g. two documents or a stray line)."""
        assert self.out.endswith("\n") and self.out.count("\n") == 1, f"stdout is not one JSON line: {self.out!r}"
        return json.loads(self.out)

    def assert_error(self, rc: int = 2, *needles: str) -> None:
        """A user error: status rc, nothing on stdout, exactly one line on stderr, no traceback."""
        assert self.rc == rc, (self.rc, self.err)
        assert self.out == ""
        assert self.err.endswith("\n") and self.err.count("\n") == 1, f"stderr is not one line: {self.err!r}"
        assert "Traceback" not in self.err
        assert "error:" in self.err
        for n in needles:
            assert n in self.err, (n, self.err)


@pytest.fixture(scope="module")
def cli_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-cache")


@pytest.fixture
def cli(cli_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """A function: argv -> Run, calling ``engine.cli.main`` in-process with stdout and stderr captured (the cache is
    ``cli_cache``, one temporary folder per test module)."""
    import huggingface_hub.utils.logging as hub_logging
    import transformers

    from engine.cli import main

    monkeypatch.setenv("STEERING_EXPLORER_CACHE", str(cli_cache))
    for name in _MAIN_ENV:  # recorded now, so monkeypatch restores them after main() set them
        monkeypatch.setenv(name, os.environ.get(name, ""))
        if not os.environ[name]:
            monkeypatch.delenv(name)
    tf_level, hub_level = transformers.logging.get_verbosity(), hub_logging.get_verbosity()
    bar = transformers.utils.logging.is_progress_bar_enabled()

    def run(*argv: str) -> Run:
        capsys.readouterr()
        try:
            rc = main(list(argv))
        except SystemExit as exc:  # argparse: --help and argument errors
            rc = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return Run(rc, out, err)

    yield run
    transformers.logging.set_verbosity(tf_level)
    hub_logging.set_verbosity(hub_level)
    if bar:
        transformers.utils.logging.enable_progress_bar()
