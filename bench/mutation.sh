#!/usr/bin/env bash
# Mutation testing of the maths with mutmut (pip install mutmut==3.8.1), in a copy of
# the repository, never in the work tree: mutmut writes a mutants/ tree and a setup.cfg.
#
#   bash bench/mutation.sh [search] [metrics] [explain] [adversarial]   (default: all four)
#
#   search   source_code/model/search.py          tests/test_decoding.py tests/test_explain_maths.py
#   metrics  source_code/evaluation/metrics.py     tests/test_metrics.py
#   explain  source_code/explain/gradcam.py, saliency.py
#                                                  tests/test_explain_maths.py tests/test_explain_methods.py
#   adversarial  source_code/explain/adversarial.py
#                                                  tests/test_explain_maths.py tests/test_explain_methods.py
#                                                  tests/test_explain_default.py (adversarial_check, through the pipeline)
#
# Each group runs in $MUTATION_DIR/<group> (default /tmp/caption-mutation), niced, with
# $MUTMUT_CHILDREN workers (default 2); a rerun resumes where the last one stopped
# (delete the folder to start over). mutmut runs, for each mutant, only the tests that
# called the mutated function, forked from a server that has imported the tests
# (process_isolation = forkserver: TensorFlow is not fork-safe once it has run ops).
# Prints killed / total per module and every surviving mutant's diff, and writes the same
# summary to docs/results/mutation_<group>.txt.
# MUTANTS="glob ..." limits the run to the mutants so named, e.g.
#   MUTANTS='source_code.explain.gradcam.x_gradcam_weights__mutmut_*' bash bench/mutation.sh explain
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${MUTATION_DIR:-/tmp/caption-mutation}
CHILDREN=${MUTMUT_CHILDREN:-2}
MUTMUT=${MUTMUT:-mutmut}
command -v "$MUTMUT" >/dev/null || { echo "mutmut not found: pip install mutmut==3.8.1" >&2; exit 2; }
MUTMUT=$(command -v "$MUTMUT")
PYTHON=$(dirname "$MUTMUT")/python; [ -x "$PYTHON" ] || PYTHON=python3   # the one mutmut runs in
read -ra only <<< "${MUTANTS:-}"   # no glob expansion here
groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(search metrics explain adversarial)

for group in "${groups[@]}"; do
  case $group in
    search)  mutate=(source_code/model/search.py)
             tests=(tests/test_decoding.py tests/test_explain_maths.py) ;;
    metrics) mutate=(source_code/evaluation/metrics.py)
             tests=(tests/test_metrics.py) ;;
    explain) mutate=(source_code/explain/gradcam.py source_code/explain/saliency.py)
             tests=(tests/test_explain_maths.py tests/test_explain_methods.py) ;;
    adversarial) mutate=(source_code/explain/adversarial.py)
             tests=(tests/test_explain_maths.py tests/test_explain_methods.py
                    tests/test_explain_default.py) ;;
    *) echo "unknown group $group (search, metrics, explain, adversarial)" >&2; exit 2 ;;
  esac
  dir=$WORK/$group
  mkdir -p "$dir"
  # the working tree's files (tracked and untracked, not ignored), without the large bundle
  (cd "$REPO" && git ls-files -co --exclude-standard | grep -v '^models/objects/' \
     | tar -cf - -T -) | tar -xf - -C "$dir"
  {
    echo "[mutmut]"
    echo "source_paths=source_code"
    echo "only_mutate="; printf '    %s\n' "${mutate[@]}"
    echo "also_copy="; printf '    %s\n' models/shapes pytest.ini vocab.txt
    echo "pytest_add_cli_args_test_selection="; printf '    %s\n' "${tests[@]}"
    # one process: mutmut reads which tests ran from its own plugin (pytest.ini asks for xdist)
    echo "pytest_add_cli_args="; printf '    %s\n' -n 0
    echo "process_isolation=forkserver"
    echo "forkserver_warmup=collect"
  } > "$dir/setup.cfg"
  echo "== $group: mutating ${mutate[*]} against ${tests[*]} in $dir"
  (cd "$dir" && nice -n 15 "$MUTMUT" run --max-children "$CHILDREN" "${only[@]}" > mutmut-run.log 2>&1) \
    || echo "   mutmut run exited $? (see $dir/mutmut-run.log)"
  (cd "$dir" && "$PYTHON" - "$MUTMUT" "${mutate[@]}" <<'EOF'
import collections, json, subprocess, sys
from mutmut.stats import status_by_exit_code
mutmut = sys.argv[1]
for path in sys.argv[2:]:
    meta = json.load(open(f"mutants/{path}.meta"))
    status = {k: status_by_exit_code[v] for k, v in meta["exit_code_by_key"].items()}
    counts = collections.Counter(status.values())
    checked = len(status) - counts["not checked"]
    print(f"{path}: killed {counts['killed'] + counts['timeout']} / {len(status)} "
          f"({checked} checked) {dict(counts)}")
    for name in sorted(k for k, v in status.items() if v == "survived"):
        diff = subprocess.run([mutmut, "show", name], capture_output=True, text=True).stdout
        print(f"  survived {name}")
        print("".join(f"      {l}\n" for l in diff.splitlines() if l[:1] in "+-" and l[:3] not in ("+++", "---")))
EOF
  ) | tee "$REPO/docs/results/mutation_$group.txt"
done
