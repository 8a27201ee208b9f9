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
