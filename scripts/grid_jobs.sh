# The job list of the result grids (scripts/dp_results.sh, scripts/secagg_results.sh), sourced
# by them. Expects $exe (the application), the array common (flags every run gets) and $jobs
# (runs in parallel); honours NICE (default 19) and LIST=1 (print the jobs, run nothing).
# One job per run folder: the application's output and log.txt in it, its exit status in `exit`,
# then the `done` marker; a folder that has it is skipped, so an interrupted grid resumes.
jobfile=$(mktemp)
trap 'rm -f "$jobfile"' EXIT
add() {  # add <folder> <args...>: one job line
  local dir="$1"; shift
  [ -f "$dir/done" ] && return
  printf '%q ' mkdir -p "$dir" >> "$jobfile"
  printf '&& nice -n %q %q ' "${NICE:-19}" "$exe" >> "$jobfile"
  printf '%q ' "${common[@]}" "$@" --out "$dir" >> "$jobfile"
  printf '> %q 2>&1; echo $? > %q; touch %q\n' "$dir/log.txt" "$dir/exit" "$dir/done" >> "$jobfile"
}
run_jobs() {  # runs (or with LIST=1 prints) the jobs added so far, then empties the list
  if [ -n "${LIST:-}" ]; then cat "$jobfile"; else xargs -d "\n" -P "$jobs" -I{} bash -c {} < "$jobfile"; fi
  : > "$jobfile"
}
