#!/usr/bin/env bash
# CUDA compiler launcher for targets whose kernels' resource usage is checked (FerryCudaResources.cmake).
# Runs the compile command it is given (which may start with another launcher, such as ccache, whose cached
# error output replays ptxas's lines too), keeps ptxas's "-v" lines in <object>.ptxas.txt next to the object,
# and passes every other line of the compiler's error output through, so build logs stay as they were.
set -u
object=""
previous=""
for argument in "$@"; do
  if [ "$previous" = "-o" ]; then object="$argument"; fi
  previous="$argument"
done
errors=$(mktemp)
"$@" 2>"$errors"
status=$?
ptxas_lines='^ptxas info|bytes stack frame'
if [ -n "$object" ]; then
  grep -E "$ptxas_lines" "$errors" >"$object.ptxas.txt"
fi
grep -v -E "$ptxas_lines" "$errors" >&2
rm -f "$errors"
exit "$status"
