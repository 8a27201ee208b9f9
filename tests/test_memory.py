"""Process memory settings of the server (source_code/web/memory.py)."""
import subprocess
import sys

from source_code.web.memory import release_free_memory

CHECK = """
import os, sys
sys.path.insert(0, {repo!r})
from source_code.web.memory import configure_process_memory
configure_process_memory()
print(os.environ.get("TF_ONEDNN_USE_SYSTEM_ALLOCATOR"))
"""


def _run(env_value=None):
    import os
    from pathlib import Path
    env = {k: v for k, v in os.environ.items() if k != "TF_ONEDNN_USE_SYSTEM_ALLOCATOR"}
    if env_value is not None:
        env["TF_ONEDNN_USE_SYSTEM_ALLOCATOR"] = env_value
    code = CHECK.format(repo=str(Path(__file__).resolve().parents[1]))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip()


def test_large_tensors_go_to_malloc_unless_the_user_chose_otherwise():
    assert _run() == "1"
    assert _run("0") == "0"


def test_app_configures_memory_before_tensorflow_is_imported():
    """TensorFlow reads the allocator setting once, when it starts."""
    from pathlib import Path
    source = (Path(__file__).resolve().parents[1] / "app.py").read_text()
    main = source[source.index("def main("):]
    assert main.index("configure_process_memory()") < main.index("load_explainer(")
    assert "import tensorflow" not in source[:source.index("def main(")]


def test_release_free_memory_is_harmless_to_call_any_time():
    for _ in range(3):
        release_free_memory()


def test_release_free_memory_trims_only_when_much_lies_free(monkeypatch):
    """After a request the heap is trimmed only when more than ``above`` bytes are free:
    trimming ~30 MB after every small request made the next one page-fault afresh."""
    from source_code.web import memory

    calls = []

    class FakeLibc:
        def __init__(self, free):
            self.free = free

        def mallinfo2(self):
            return memory._MallInfo2(fordblks=self.free)

        def malloc_trim(self, pad):
            calls.append(pad)

    monkeypatch.setattr(memory, "_libc", lambda: FakeLibc(30 * 2**20))
    memory.release_free_memory(above=memory.TRIM_ABOVE)
    assert calls == []
    memory.release_free_memory()                 # unconditional (after the warm-up)
    assert calls == [0]
    monkeypatch.setattr(memory, "_libc", lambda: FakeLibc(2 * memory.TRIM_ABOVE))
    memory.release_free_memory(above=memory.TRIM_ABOVE)
    assert calls == [0, 0]
    assert memory.free_heap_bytes() == 2 * memory.TRIM_ABOVE
    monkeypatch.undo()
    real = memory.free_heap_bytes()
    assert real is None or real >= 0
