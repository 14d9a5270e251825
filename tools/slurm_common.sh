# Sourced by the SLURM job scripts (tools/slurm_example.sh, tools/slurm_eval.sh) after they cd to the
# submit directory: sets PYTHON to the interpreter of the environment active at submission (SLURM
# exports the environment by default; ZEPHYR_PYTHON overrides it) and stops the job if it cannot
# import zephyr_lib.
PYTHON=${ZEPHYR_PYTHON:-$(command -v python3 || command -v python || true)}
if [ -z "$PYTHON" ] || ! "$PYTHON" -c "import zephyr_lib" 2>/dev/null; then
  echo "error: no python with zephyr_lib: activate the paper environment before sbatch (README: Paper scale) or set ZEPHYR_PYTHON" >&2
  exit 2
fi
