#!/bin/sh
# layers.sh OBJDIR: fails when a file of vm/ uses a symbol of a file in a
# layer above its own (nm of the objects), when a library symbol is global
# without conclua_, luaopen_conc or conc_, or when a file has no layer.
# layers.sh --files LAYER: the sources of LAYER and those below it (what
# a test of one layer links: make fuzz).
# The layers, bottom up (docs/architecture.md says what each file is):
LAYERS='
os       fdio wait alloc fork owner shmheap lifeline
core     object msg runtime waitq shm trace
values   names marshal parcel
workers  worker thread threadpool process child reap exit deadlock
modules  channel pipe queue sync cond timer shared shtab select future pool mpiapi
init     init stdlib_gen
command  main repl pretty'
if [ "$1" = --files ]; then
  echo "$LAYERS" | awk -v top="${2:?usage: layers.sh --files LAYER}" '
    NF { for (i = 2; i <= NF; i++) if ($i != "stdlib_gen") printf "vm/%s.c ", $i }
    $1 == top { found = 1; exit }
    END { if (!found) { print "layers: no layer " top > "/dev/stderr"; exit 1 } }'
  exit
fi
# the objects of the sources vm/ has now (a stale object of a removed file
# does not count), and the generated stdlib
srcs=$(cd vm && ls *.c | sed 's/\.c$//'; echo stdlib_gen)
cd "${1:?usage: layers.sh OBJDIR}" || exit 2
objs=$(for s in $srcs; do [ -f "$s.o" ] && echo "$s.o"; done)
echo "$LAYERS" | awk 'NF { for (i = 2; i <= NF; i++) print $i, NR }' > .layers
for s in $srcs; do echo "$s"; done | sort | join -v1 - "$(sort .layers > .l && echo .l)" |
  awk '{ print "layers: " $1 ".c has no layer in vm/tools/layers.sh"; bad = 1 } END { exit bad }' || exit 1
for f in $objs; do nm -g --defined-only "$f" | awk -v f="${f%.o}" '{ print $3, f }'; done | sort > .defs
for f in $objs; do nm -u "$f" | awk -v f="${f%.o}" '{ print $2, f }'; done | sort | join - .defs > .uses
awk 'NR == FNR { layer[$1] = $2; name[$2] = name[$2] ? name[$2] : $1; next }
     $2 != $3 && layer[$3] > layer[$2] {
       print "layers: " $2 ".c uses " $1 " of " $3 ".c, a layer above"; bad = 1 }
     END { exit bad }' .l .uses || exit 1
awk '$2 != "main" && $1 !~ /^(conclua_|luaopen_conc|conc_)/ {
       print "layers: " $2 ".c exports " $1 " without the conc_ prefix"; bad = 1 }
     END { exit bad }' .defs || exit 1
rm -f .layers .l .defs .uses
