# The job list of the result grids (scripts/dp_results.sh, scripts/secagg_results.sh and
# scripts/results.sh's paper and params grids), sourced by them. Expects $exe (the application),
# the array common (flags every run gets) and $jobs (runs in parallel). Honours
#   NICE         the runs' nice level (default 19)
#   LIST=1       print the jobs, run nothing
#   SHARD=i/n    run only every n-th job from the i-th (0 <= i < n): n machines given the same
#                grid split it without talking (the count includes finished jobs, so a shard's
#                jobs do not move as others finish); copy their folders together afterwards
#   CHECKPOINTS=1  every run checkpoints each round into <folder>/checkpoints (--resume), so a
#                run killed mid-way resumes there instead of starting over; removed once it ends
# One job per run folder: the application's output and log.txt in it, its exit status in `exit`,
# then the `done` marker; a folder that has it is skipped, so an interrupted grid resumes. A run
# that fails on its own (a diverged model) is a result too and gets its marker; one ended by a
# signal (the grid killed) does not, and runs again. After each run a line says how many of this
# invocation's runs are finished and estimates the time left from the pace so far.
jobfile=$(mktemp)
progress=$(mktemp)
trap 'rm -f "$jobfile" "$progress"' EXIT
job_index=0
add() {  # add <folder> <args...>: one job line
  local dir="$1"; shift
  local index=$((job_index++))
  if [ -n "${SHARD:-}" ] && [ $((index % ${SHARD#*/})) -ne "${SHARD%/*}" ]; then return; fi
  [ -f "$dir/done" ] && return
  local resume=()
  [ -n "${CHECKPOINTS:-}" ] && resume=(--resume "$dir/checkpoints")
  printf '%q ' mkdir -p "$dir" >> "$jobfile"
  printf '&& nice -n %q %q ' "${NICE:-19}" "$exe" >> "$jobfile"
  printf '%q ' "${common[@]}" "$@" "${resume[@]}" --out "$dir" >> "$jobfile"
  printf '> %q 2>&1; rc=$?; echo $rc > %q; ' "$dir/log.txt" "$dir/exit" >> "$jobfile"
  printf 'if [ $rc -lt 128 ]; then rm -rf %q; touch %q; fi; grid_progress %q\n' \
    "$dir/checkpoints" "$dir/done" "$dir" >> "$jobfile"
}
grid_progress() {  # grid_progress <folder>: after a run, the count and the time left
  local k elapsed
  k=$(flock "$GRID_PROGRESS" bash -c 'echo "$1" >> "$2"; wc -l < "$2"' _ "$1" "$GRID_PROGRESS")
  elapsed=$(($(date +%s) - GRID_START))
  echo "grid: $k of $GRID_TOTAL runs ended ($1), $((elapsed / 60)) min so far," \
    "about $((elapsed * (GRID_TOTAL - k) / k / 60)) min left"
}
run_jobs() {  # runs (or with LIST=1 prints) the jobs added so far, then empties the list
  if [ -n "${LIST:-}" ]; then
    cat "$jobfile"
  else
    GRID_TOTAL=$(wc -l < "$jobfile") GRID_START=$(date +%s) GRID_PROGRESS=$progress
    export GRID_TOTAL GRID_START GRID_PROGRESS
    export -f grid_progress
    : > "$progress"
    xargs -d "\n" -P "$jobs" -I{} bash -c {} < "$jobfile"
  fi
  : > "$jobfile"
}
