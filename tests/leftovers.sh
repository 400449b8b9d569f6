#!/usr/bin/env bash
# The last step of `make test`: fails, naming them, when processes the tests started are still
# running: any whose binary, command line or open files lie under this checkout's target/
# (wssbridge, the peers' masters and their workers, which hold their logs there open).
set -u
root="$(cd "$(dirname "$0")/.." && pwd)/target"
left=()
for proc in /proc/[0-9]*; do
  pid=${proc#/proc/}
  [ "$pid" = "$$" ] && continue
  # Not this script's own helpers.
  ppid=$(awk '/^PPid:/ {print $2}' "$proc/status" 2>/dev/null) || continue
  [ "$ppid" = "$$" ] && continue
  cmd=$(tr '\0' ' ' < "$proc/cmdline" 2>/dev/null) || continue
  exe=$(readlink "$proc/exe" 2>/dev/null || true)
  if [[ "$exe" == "$root"/* || "$cmd" == *"$root/"* ]] ||
     find "$proc/fd" -maxdepth 1 -lname "$root/*" 2>/dev/null | grep -q .; then
    left+=("$pid: $cmd")
  fi
done
if ((${#left[@]})); then
  echo "make test left ${#left[@]} process(es) running:" >&2
  printf '  %s\n' "${left[@]}" >&2
  exit 1
fi
echo "make test left no process behind"
