#!/usr/bin/env bash
# Run the whole MCL companion: train and evaluate every experiment of a
# profile, then build Tables 1-5 and Figures 1, 4 and 5, all through the
# notebooks in notebooks/ (executed with papermill).
#
#   ./run_all.sh [--profile smoke|quick|paper] [--only NAME ...] [--force]
#                [--gpus LIST] [--gpus-per-run N] [--runs DIR]
#                [--figures DIR] [--test [PYTEST ARGS ...]]
#
#   --profile P       smoke (synthetic data, a few minutes on a CPU), quick
#                     (default; digits, about 15 minutes on 2 CPU cores) or
#                     paper (CIFAR-10 on GPUs, downloads the data sets).
#   --only NAME ...   run only these experiments (e.g. mcl ce) and/or
#                     notebooks (00_walkthrough, 03_tables, 04, 05, ...).
#   --force           rerun steps even if their outputs are up to date
#                     (with the paper profile: also run without a GPU).
#   --gpus LIST       GPU ids, e.g. 0,1,2,3: independent experiments run
#                     concurrently, one GPU group each; a fine-tune starts
#                     once the run it starts from has finished.
#   --gpus-per-run N  GPUs per experiment (default 1); with N > 1 the
#                     training notebook launches mcl_core.train through
#                     torchrun --nproc_per_node N.
#   --runs DIR        where runs/<profile>/... go (default runs, or $MCL_RUNS)
#   --figures DIR     where figures/<profile>/... go (default figures, or
#                     $MCL_FIGURES)
#   --test ...        run the test suite (python -m pytest ...) and exit
#                     with its status.
#
# A step is skipped when its stamp file (runs/<profile>/.stamps/<step>)
# holds the hash of its notebook, its parameters and the stamps it depends on;
# stamps are written only after success, so an interrupted run continues
# where it stopped. Executed notebooks and their logs are kept beside the
# outputs: runs/<profile>/<experiment>/NN_*.ipynb|.log for training and
# evaluation, runs/<profile>/notebooks/ for the rest.
set -euo pipefail

# Everything runs inside main, which bash parses completely before it
# starts: editing this file during a run cannot change the running one.
main() {
  ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  cd "$ROOT"

  PROFILE=quick
  FORCE=0
  GPUS=""
  GPUS_PER_RUN=1
  RUNS="${MCL_RUNS:-runs}"
  FIGURES="${MCL_FIGURES:-figures}"
  ONLY=()
  TEST=0
  PYTEST_ARGS=()

  usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
  die() { echo "run_all.sh: $*" >&2; exit 2; }

  while [[ $# -gt 0 ]]; do
    case "$1" in
      --profile) [[ $# -ge 2 ]] || die "--profile needs a value"
                 PROFILE="$2"; shift 2 ;;
      --profile=*) PROFILE="${1#*=}"; shift ;;
      --only) shift
              while [[ $# -gt 0 && "$1" != --* ]]; do ONLY+=("$1"); shift; done
              [[ ${#ONLY[@]} -gt 0 ]] || die "--only needs at least one NAME" ;;
      --force) FORCE=1; shift ;;
      --gpus) [[ $# -ge 2 ]] || die "--gpus needs a list, e.g. 0,1"
              GPUS="$2"; shift 2 ;;
      --gpus-per-run) [[ $# -ge 2 ]] || die "--gpus-per-run needs a number"
                      GPUS_PER_RUN="$2"; shift 2 ;;
      --runs) [[ $# -ge 2 ]] || die "--runs needs a directory"
              RUNS="$2"; shift 2 ;;
      --figures) [[ $# -ge 2 ]] || die "--figures needs a directory"
                 FIGURES="$2"; shift 2 ;;
      --test) TEST=1; shift; PYTEST_ARGS=("$@"); break ;;
      -h|--help) usage; exit 0 ;;
      *) die "unknown argument '$1' (see --help)" ;;
    esac
  done

  case "$PROFILE" in
    smoke|quick|paper) ;;
    *) die "--profile must be one of smoke, quick, paper; got '$PROFILE'" ;;
  esac
  [[ "$GPUS_PER_RUN" =~ ^[1-9][0-9]*$ ]] \
    || die "--gpus-per-run must be a positive integer, got '$GPUS_PER_RUN'"

  # ---------------------------------------------------------------- environment

  bootstrap() {
    # an active venv or conda env is used as it is
    if [[ -n "${VIRTUAL_ENV:-}" || -n "${CONDA_PREFIX:-}" ]]; then
      return
    fi
    if python3 -c "import mcl_core, papermill" >/dev/null 2>&1; then
      return
    fi
    if [[ ! -x .venv/bin/python ]]; then
      echo "== creating .venv and installing the companion (first run only)"
      python3 -m venv .venv
      .venv/bin/python -m pip install --upgrade pip >/dev/null
      .venv/bin/python -m pip install -e ".[test]"
    fi
    # shellcheck disable=SC1091
    source .venv/bin/activate
  }

  bootstrap
  # the package is importable from the checkout even when not pip-installed
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  PY="$(command -v python || command -v python3)"

  if [[ $TEST -eq 1 ]]; then
    exec "$PY" -m pytest ${PYTEST_ARGS[@]+"${PYTEST_ARGS[@]}"}
  fi

  # papermill runs the notebooks in a kernel of this environment
  kernel_name() {
    "$PY" - <<'EOF'
import os, shutil, sys
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
try:
    spec = KernelSpecManager().get_kernel_spec("python3")
    exe = shutil.which(spec.argv[0]) or spec.argv[0]
    ok = os.path.realpath(exe) == os.path.realpath(sys.executable)
except NoSuchKernel:
    ok = False
print("python3" if ok else "")
EOF
  }
  KERNEL="$(kernel_name)"
  if [[ -z "$KERNEL" ]]; then
    KERNEL=mcl-companion
    "$PY" -m ipykernel install --sys-prefix --name "$KERNEL" \
      --display-name "Python (MCL companion)" >/dev/null
  fi

  # ---------------------------------------------------------------- the plan

  PROFILE_RUNS="$RUNS/$PROFILE"
  STAMPS="$PROFILE_RUNS/.stamps"
  NB_OUT="$PROFILE_RUNS/notebooks"
  TIMES="$PROFILE_RUNS/.times.$$"

  mapfile -t EXPERIMENTS < <("$PY" -m mcl_core.config --profile "$PROFILE" --list)
  [[ ${#EXPERIMENTS[@]} -gt 0 ]] || die "profile $PROFILE lists no experiments"
  REPORT_NOTEBOOKS=(03_tables 04_figure1_tsne 05_figure5_scores
                    06_figure4_failures)

  matches() {  # matches NAME WANT: experiments by name; notebooks also by
    # number or by the part after it (03_tables, 03 or tables)
    [[ "$1" == "$2" ]] && return 0
    [[ "$1" =~ ^[0-9][0-9]_ ]] || return 1
    [[ "${1%%_*}" == "$2" || "${1#*_}" == "$2" ]]
  }

  selected() {  # selected NAME: is NAME chosen by --only (or no --only given)?
    [[ ${#ONLY[@]} -eq 0 ]] && return 0
    local want
    for want in "${ONLY[@]}"; do
      matches "$1" "$want" && return 0
    done
    return 1
  }

  for want in ${ONLY[@]+"${ONLY[@]}"}; do
    known=0
    for name in "${EXPERIMENTS[@]}" 00_walkthrough "${REPORT_NOTEBOOKS[@]}"; do
      if matches "$name" "$want"; then known=1; fi
    done
    [[ $known -eq 1 ]] || die "--only: '$want' is neither an experiment" \
      "of profile $PROFILE (${EXPERIMENTS[*]}) nor a notebook"
  done

  mkdir -p "$STAMPS" "$NB_OUT" "$FIGURES"
  : > "$TIMES"
  trap 'rm -f "$TIMES"' EXIT

  # ------------------------------------------------------------ running a step

  CHILD=""
  on_interrupt() {
    if [[ -n "$CHILD" ]]; then kill -TERM -- "-$CHILD" 2>/dev/null || true; fi
    for pid in ${JOB_PIDS[@]+"${JOB_PIDS[@]}"}; do
      kill -TERM -- "-$pid" 2>/dev/null || true
    done
    echo "run_all.sh: interrupted; run the same command again to continue" >&2
    exit 130
  }
  JOB_PIDS=()
  trap on_interrupt INT TERM

  step_hash() {  # step_hash NOTEBOOK PARAMS_JSON UPSTREAM_STAMP...
    local nb="$1" params="$2"; shift 2
    {
      echo "$nb"
      sha256sum < "notebooks/$nb"
      echo "$params"
      for up in "$@"; do cat "$up" 2>/dev/null || echo "missing $up"; done
    } | sha256sum | cut -d' ' -f1
  }

  up_to_date() {  # up_to_date STAMP HASH
    [[ $FORCE -eq 0 && -f "$1" && "$(head -n1 "$1")" == "$2" ]]
  }

  write_stamp() {  # write_stamp STAMP HASH NOTE: only after success
    printf '%s\n%s\n' "$2" "$3" > "$1.tmp"
    mv "$1.tmp" "$1"
  }

  # run_step STEP NOTEBOOK OUT_DIR PARAMS_JSON [UPSTREAM_STAMP...]
  run_step() {
    local step="$1" nb="$2" out_dir="$3" params="$4"; shift 4
    local stamp="$STAMPS/$step" hash
    hash="$(step_hash "$nb" "$params" "$@")"
    if up_to_date "$stamp" "$hash"; then
      echo "-- skip $step (up to date)"
      printf '%s\tskipped\n' "$step" >> "$TIMES"
      return 0
    fi
    rm -f "$stamp"
    execute "$step" "$nb" "$out_dir" "$params" || return 1
    write_stamp "$stamp" "$hash" "finished in ${TOOK} s"
  }

  # execute STEP NOTEBOOK OUT_DIR PARAMS_JSON: papermill, timing, errors
  execute() {
    local step="$1" nb="$2" out_dir="$3" params="$4"
    mkdir -p "$out_dir"
    local name out log start status=0
    name="$(basename "$nb" .ipynb)"
    out="$out_dir/$name.ipynb"
    log="$out_dir/$name.log"
    echo "== run  $step  ($nb -> $out)"
    start=$SECONDS
    setsid "$PY" -m papermill "notebooks/$nb" "$out" -k "$KERNEL" \
      --cwd "$ROOT" -y "$params" --log-output --no-progress-bar \
      > "$log" 2>&1 &
    CHILD=$!
    wait "$CHILD" || status=$?
    CHILD=""
    local took=$((SECONDS - start))
    if [[ $status -ne 0 ]]; then
      echo "!! $step failed after ${took} s: notebook $nb (exit $status)" >&2
      echo "   executed notebook: $out" >&2
      echo "   log: $log" >&2
      if grep -q "PapermillExecutionError" "$log"; then
        sed -n '/PapermillExecutionError/,$p' "$log" | head -n 40 >&2
      else
        tail -n 25 "$log" >&2
      fi
      return 1
    fi
    TOOK=$took
    printf '%s\t%d s\n' "$step" "$took" >> "$TIMES"
  }

  json_params() {  # json_params key value ...: a JSON object of strings
    "$PY" -c 'import json, sys; a = sys.argv[1:]; print(json.dumps(
      dict(zip(a[::2], a[1::2])), sort_keys=True))' "$@"
  }

  step_params() {  # step_params STEP EXPERIMENT(S) DEVICE
    if [[ "$1" == 01_train ]]; then
      json_params profile "$PROFILE" experiment "$2" out_dir "$RUNS" \
        overrides "" device "$3" nproc "$GPUS_PER_RUN"
    else
      json_params profile "$PROFILE" experiment "$2" out_dir "$RUNS" \
        device "$3"
    fi
  }

  step_upstream() {  # step_upstream STEP EXPERIMENT: stamps it depends on
    # a fine-tune depends on the checkpoint of the run it starts from
    if [[ "$1" == 01_train ]]; then
      for parent in $(parents_of "$2"); do echo "$STAMPS/$parent.01_train"; done
    else
      echo "$STAMPS/$2.01_train"
    fi
  }

  run_experiment() {  # run_experiment NAME DEVICE
    local exp="$1" device="$2" step ups=()
    for step in 01_train 02_evaluate; do
      mapfile -t ups < <(step_upstream "$step" "$exp")
      run_step "$exp.$step" "$step.ipynb" "$PROFILE_RUNS/$exp" \
        "$(step_params "$step" "$exp" "$device")" ${ups[@]+"${ups[@]}"} \
        || return 1
    done
  }

  # run_batched STEP: one notebook for every selected experiment whose STEP
  # is out of date (CPU profiles: one kernel start instead of one per run);
  # each experiment keeps its own stamp, written once the notebook succeeded
  run_batched() {
    local step="$1" exp hash ups=() stale=()
    declare -A rerun=()
    for exp in "${EXPERIMENTS[@]}"; do
      selected "$exp" || continue
      mapfile -t ups < <(step_upstream "$step" "$exp")
      hash="$(step_hash "$step.ipynb" "$(step_params "$step" "$exp" "")" \
        ${ups[@]+"${ups[@]}"})"
      local again=0
      up_to_date "$STAMPS/$exp.$step" "$hash" || again=1
      for parent in $(parents_of "$exp"); do
        [[ -n "${rerun[$parent]:-}" ]] && again=1
      done
      if [[ $again -eq 1 ]]; then
        rerun["$exp"]=1; stale+=("$exp"); rm -f "$STAMPS/$exp.$step"
      else
        echo "-- skip $exp.$step (up to date)"
        printf '%s\tskipped\n' "$exp.$step" >> "$TIMES"
      fi
    done
    [[ ${#stale[@]} -gt 0 ]] || return 0

    local list
    list="$(IFS=,; echo "${stale[*]}")"
    execute "$step ($list)" "$step.ipynb" "$NB_OUT" \
      "$(step_params "$step" "$list" "")" || return 1
    # parents come first in the list, so their new stamps feed the hashes
    for exp in "${stale[@]}"; do
      mapfile -t ups < <(step_upstream "$step" "$exp")
      hash="$(step_hash "$step.ipynb" "$(step_params "$step" "$exp" "")" \
        ${ups[@]+"${ups[@]}"})"
      write_stamp "$STAMPS/$exp.$step" "$hash" "finished with ${list}"
    done
  }

  # ------------------------------------------------------- experiments' graph

  declare -gA PARENTS=()
  load_parents() {
    local line
    while IFS=$'\t' read -r name parent; do
      [[ -n "$name" ]] && PARENTS["$name"]="$parent"
    done < <("$PY" - "$PROFILE" <<'EOF'
import sys
from mcl_core import config
prof = config.get_profile(sys.argv[1])
for name, exp in prof.experiments.items():
    # a fine-tune starts from another experiment of the profile
    parent = exp.train.init_from
    print(f"{name}\t{parent if parent in prof.experiments else ''}")
EOF
    )
  }
  parents_of() { echo "${PARENTS[$1]:-}"; }
  load_parents

  paper_preflight() {
    echo "== paper profile: runs in dependency order"
    printf '   %s\n' "${EXPERIMENTS[@]}"
    "$PY" - <<'EOF'
from mcl_core.config import estimate_gpu_hours
hours = estimate_gpu_hours("paper")
total = hours.pop("total")
for name, h in hours.items():
    print(f"   {name:18s} {h:7.1f} GPU-hours")
print(f"   {'total':18s} {total:7.1f} GPU-hours (training only; an estimate"
      " at an assumed throughput, see mcl_core.config.estimate_gpu_hours)")
EOF
    if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"
    then
      if [[ $FORCE -eq 0 ]]; then
        echo "run_all.sh: the paper profile needs a CUDA GPU and none is" \
          "visible; use --profile quick on a CPU, or --force to try anyway" >&2
        exit 3
      fi
      echo "!! no GPU visible; continuing because of --force" >&2
    fi
  }

  run_parallel() {  # one experiment per GPU group, parents first
    IFS=',' read -r -a gpu_list <<< "$GPUS"
    local groups=() i
    for ((i = 0; i + GPUS_PER_RUN <= ${#gpu_list[@]}; i += GPUS_PER_RUN)); do
      groups+=("$(IFS=,; echo "${gpu_list[*]:i:GPUS_PER_RUN}")")
    done
    [[ ${#groups[@]} -gt 0 ]] || die "--gpus $GPUS holds fewer than" \
      "--gpus-per-run $GPUS_PER_RUN GPUs"
    echo "== running on GPU groups: ${groups[*]}"

    # the paper profile trains on CUDA; the others keep their own device
    local device=""
    [[ "$PROFILE" == paper ]] && device=cuda
    local pending=() running_exp=() running_grp=() free=("${groups[@]}")
    declare -A done_ok=()
    for exp in "${EXPERIMENTS[@]}"; do
      if selected "$exp"; then pending+=("$exp"); else done_ok["$exp"]=1; fi
    done
    JOB_PIDS=()
    while [[ ${#pending[@]} -gt 0 || ${#JOB_PIDS[@]} -gt 0 ]]; do
      # start every pending experiment whose parents are done, while GPUs last
      local still=() exp
      for exp in ${pending[@]+"${pending[@]}"}; do
        local ready=1
        for parent in $(parents_of "$exp"); do
          [[ -n "${done_ok[$parent]:-}" ]] || ready=0
        done
        if [[ $ready -eq 1 && ${#free[@]} -gt 0 ]]; then
          local grp="${free[0]}"; free=("${free[@]:1}")
          echo "== start $exp on GPU $grp"
          # the job stops its notebook when it is stopped itself
          CUDA_VISIBLE_DEVICES="$grp" setsid bash -c \
            "set -euo pipefail; CHILD=''; \
             trap 'kill -TERM -- -\$CHILD 2>/dev/null; exit 130' INT TERM; \
             $(declare -f run_experiment run_step execute step_hash \
               json_params parents_of step_params step_upstream \
               up_to_date write_stamp); $(declare -p PARENTS); \
             run_experiment '$exp' '$device'" \
            > "$PROFILE_RUNS/.job.$exp.log" 2>&1 &
          JOB_PIDS+=($!); running_exp+=("$exp"); running_grp+=("$grp")
        else
          still+=("$exp")
        fi
      done
      pending=(${still[@]+"${still[@]}"})

      # wait for one job to end
      sleep 5
      local keep_pid=() keep_exp=() keep_grp=() k
      for k in "${!JOB_PIDS[@]}"; do
        local pid="${JOB_PIDS[$k]}"
        if kill -0 "$pid" 2>/dev/null; then
          keep_pid+=("$pid"); keep_exp+=("${running_exp[$k]}")
          keep_grp+=("${running_grp[$k]}")
          continue
        fi
        local st=0
        wait "$pid" || st=$?
        cat "$PROFILE_RUNS/.job.${running_exp[$k]}.log"
        if [[ $st -ne 0 ]]; then
          for other in "${JOB_PIDS[@]}"; do
            [[ "$other" == "$pid" ]] || kill -TERM -- "-$other" 2>/dev/null \
              || true
          done
          echo "!! experiment ${running_exp[$k]} failed; stopped the others" >&2
          exit 1
        fi
        done_ok["${running_exp[$k]}"]=1
        free+=("${running_grp[$k]}")
      done
      JOB_PIDS=(${keep_pid[@]+"${keep_pid[@]}"})
      running_exp=(${keep_exp[@]+"${keep_exp[@]}"})
      running_grp=(${keep_grp[@]+"${keep_grp[@]}"})
    done
  }

  # ---------------------------------------------------------------- run it

  export RUN_ALL_PROFILE="$PROFILE" MCL_RUNS="$RUNS" MCL_FIGURES="$FIGURES"
  export FORCE STAMPS TIMES PY KERNEL ROOT PROFILE_RUNS PROFILE RUNS \
    GPUS_PER_RUN
  [[ "$PROFILE" == paper ]] && paper_preflight
  echo "== profile $PROFILE: ${#EXPERIMENTS[@]} experiments;" \
    "runs in $PROFILE_RUNS, figures in $FIGURES/$PROFILE"
  T0=$SECONDS

  if selected 00_walkthrough; then
    run_step 00_walkthrough 00_walkthrough.ipynb "$NB_OUT" \
      "$(json_params profile "$PROFILE" figures_dir "$FIGURES")"
  fi

  if [[ -n "$GPUS" ]]; then
    run_parallel
  elif [[ "$PROFILE" == paper ]]; then
    for exp in "${EXPERIMENTS[@]}"; do
      # "" keeps the device of the profile's settings
      if selected "$exp"; then run_experiment "$exp" ""; fi
    done
  else
    run_batched 01_train
    run_batched 02_evaluate
  fi

  EVAL_STAMPS=()
  for exp in "${EXPERIMENTS[@]}"; do EVAL_STAMPS+=("$STAMPS/$exp.02_evaluate"); done
  for nb in "${REPORT_NOTEBOOKS[@]}"; do
    selected "$nb" || continue
    run_step "$nb" "$nb.ipynb" "$NB_OUT" \
      "$(json_params profile "$PROFILE" runs_dir "$RUNS" \
          figures_dir "$FIGURES")" \
      "${EVAL_STAMPS[@]}"
  done

  # ---------------------------------------------------------------- summary

  shopt -s nullglob
  tables=("$FIGURES/$PROFILE"/table[0-9].md)
  if [[ ${#tables[@]} -gt 0 ]]; then
    echo
    echo "== tables ($FIGURES/$PROFILE)"
    for t in "${tables[@]}"; do echo; cat "$t"; done
  fi
  echo
  echo "== time per step"
  column -t -s $'\t' "$TIMES" 2>/dev/null || cat "$TIMES"
  echo "total $((SECONDS - T0)) s"
  rm -f "$TIMES"
}

main "$@"
exit $?
