#!/usr/bin/env bash
# perf-flamegraph.sh	Allocation flame graph of a live heapprobe process,
#			with perf only (no bpftrace, cargo or repository).
#	For Linux, uses perf and uprobes; readelf (binutils) for the ELF.
#
# USAGE: perf-flamegraph.sh PID [SECONDS [EVENT]]
#   SECONDS  how long to record (default 10; Ctrl-C ends it early)
#   EVENT    a heapprobe probe (default alloc): alloc, dealloc, realloc,
#            alloc_locked, dealloc_locked, realloc_locked, alloc_failed,
#            scope_begin, scope_end, local_{alloc,dealloc,grow,shrink,failed},
#            sample, sample_free
#   Env: OUT (output directory, default ./heapprobe-PID), PERF (perf
#        binary), CALLGRAPH (default fp; dwarf for binaries built without
#        frame pointers, much bigger and slower).
#
# Example output (tests/fixture --scripts, SECONDS 6):
#
#   Tracing PID 4242: 4 sites of heapprobe:alloc (0 bogus skipped).
#   Recording for 6 s... Hit Ctrl-C to end.
#   heapprobe:alloc: 1211 events, 6310922 bytes
#   perf.data holds 1211 samples; perf lost 0
#   Wrote the recording, the folded stacks (weight: bytes) and the capture:
#     heapprobe-4242/perf.data
#     heapprobe-4242/alloc.folded
#     heapprobe-4242/alloc.txt
#   and the flame graph:
#     heapprobe-4242/alloc.svg
#
# Read it as: while recording, the process made 1211 allocations, 6310922
# bytes in all, and perf's own count of the samples it kept (and lost)
# agrees. In the SVG each frame's width is the bytes allocated through it.
# alloc.txt is the `perf script` text, symbols resolved here, headed by
# perf's count: `cargo xtask fold alloc.txt --event alloc` in a heapprobe
# checkout folds it anywhere, checked against that count. Without
# inferno-flamegraph (cargo install inferno) or flamegraph.pl, it says how
# to render the folded file elsewhere. It exits 1 when perf script's events
# disagree with perf.data's samples, or perf lost more than 1% of them.
#
# Why not `perf probe sdt_heapprobe:alloc`: perf 6.1 (Debian 12) uses the
# SDT note's address as the file offset. rust-lld, Rust's default linker,
# maps code at file offset + 0x1000, so every probe lands 4 KiB off: nothing
# is recorded and the traced process dies of SIGSEGV. This script reads the
# notes and program headers with readelf and registers each site at
# address - segment address + segment offset, only for sites inside an
# executable PT_LOAD segment whose byte is a nop; the others (the linker
# leaves notes with addresses like 0x7d for discarded code) are skipped.
#
# Its uprobes are in the group heapprobe_sh_<this script's pid> and are
# removed on every exit (end, error, Ctrl-C, TERM).
#
# Stacks need frame pointers (RUSTFLAGS="-C force-frame-pointers=yes");
# without, each stack stops after a frame or two (or use CALLGRAPH=dwarf).
#
# Overhead: each probe hit traps into the kernel and writes a sample with
# its stack to perf's buffer. Measured on the 2-core development VM (perf
# 6.1), on a loop of 1000 allocs + 1000 frees of 4 KiB that takes 294 us
# untraced: 4652 us while recording alloc, about 4.4 us per allocation (16x
# on that loop). Busy processes can lose samples: perf then says "lost".
set -u

die() {
	echo "perf-flamegraph.sh: $*" >&2
	exit 1
}

[ $# -ge 1 ] || { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
pid=$1
seconds=${2:-10}
event=${3:-alloc}
case $pid in '' | *[!0-9]*) die "PID must be a number, got '$pid'" ;; esac
case $seconds in '' | *[!0-9]*) die "SECONDS must be a number, got '$seconds'" ;; esac
# Each probe's argument names, in order (as probes/heapprobe.d names them: the
# capture's events read `size=4096`, which `cargo xtask fold` weighs by), and
# the argument that weighs a stack (none: each call counts 1).
case $event in
alloc | dealloc | alloc_locked | dealloc_locked) names="ptr size align" weight=size unit=bytes ;;
realloc | realloc_locked) names="old_ptr new_ptr old_size new_size align" weight=new_size unit="bytes (new sizes)" ;;
alloc_failed) names="size align" weight=size unit="bytes asked for" ;;
scope_begin | scope_end) names="id" weight= unit=calls ;;
local_alloc | local_dealloc) names="id ptr size align" weight=size unit=bytes ;;
local_grow | local_shrink) names="id old_ptr new_ptr old_size new_size align" weight=new_size unit="bytes (new sizes)" ;;
local_failed) names="id size align" weight=size unit="bytes asked for" ;;
sample) names="ptr size weight" weight=weight unit="bytes (estimated by the profiler's samples)" ;;
sample_free) names="ptr" weight= unit=calls ;;
*) die "unknown heapprobe probe '$event'" ;;
esac
perf=${PERF:-perf}
out=${OUT:-heapprobe-$pid}
callgraph=${CALLGRAPH:-fp}

[ "$(id -u)" -eq 0 ] || die "needs root (it registers uprobes): run it with sudo"
[ -e "/proc/$pid/exe" ] || die "no process $pid"
"$perf" --version >/dev/null 2>&1 || die "$perf does not run: apt-get install -y linux-perf"
command -v readelf >/dev/null 2>&1 || die "no readelf: apt-get install -y binutils"
tracefs=/sys/kernel/tracing
[ -e $tracefs/uprobe_events ] || tracefs=/sys/kernel/debug/tracing
[ -e $tracefs/uprobe_events ] ||
	die "tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing"

exe=$(readlink "/proc/$pid/exe")
case $exe in *" (deleted)" | "") exe=/proc/$pid/exe ;; esac
[ -r "$exe" ] || die "cannot read $exe"

group=heapprobe_sh_$$
events=()
perf_pid=
cleanup() {
	# The kernel refuses to remove a uprobe perf still has open: stop perf
	# and wait for it first.
	if [ -n "$perf_pid" ]; then
		kill -INT "$perf_pid" 2>/dev/null
		while kill -0 "$perf_pid" 2>/dev/null; do wait "$perf_pid" 2>/dev/null || sleep 0.1; done
		perf_pid=
	fi
	for e in "${events[@]}"; do
		echo "-:$group/$e" >>$tracefs/uprobe_events 2>/dev/null
	done
	events=()
}
trap cleanup EXIT
trap 'cleanup; exit 143' TERM
trap 'cleanup; exit 130' INT

# The sites: "name location semaphore args..." from the SDT notes, and the
# LOAD segments: "offset vaddr filesz flags".
notes=$(readelf -nW "$exe" | awk '
	/Provider:/ { sub(/.*Provider: */, ""); provider = $1; next }
	/Name:/ { name = $2; next }
	/Location:/ { loc = $2; base = $4; sem = $6; gsub(/,/, "", loc); gsub(/,/, "", base); next }
	/Arguments:/ {
		if (provider == "heapprobe") { $1 = ""; print name, loc, base, sem $0 }
	}')
[ -n "$notes" ] || die "$exe has no heapprobe SDT notes: is it a heapprobe build with probes?"
segments=$(readelf -lW "$exe" | awk '$1 == "LOAD" { print $2, $3, $5, ($0 ~ / R?W?E /) ? "x" : "-" }')
sdt_base=$(readelf -SW "$exe" | awk '/ \.stapsdt\.base / { for (i = 1; i <= NF; i++) if ($i == "PROGBITS") { print "0x" $(i + 1); exit } }')

# file_offset VADDR [x]: the file offset of VADDR, or nothing if it is in no
# LOAD segment (with x: no executable one).
file_offset() {
	local v=$(($1)) off va sz fl
	while read -r off va sz fl; do
		[ "${2:-}" = x ] && [ "$fl" != x ] && continue
		if [ "$v" -ge $((va)) ] && [ "$v" -lt $((va + sz)) ]; then
			printf '0x%x\n' $((v - va + off))
			return
		fi
	done <<<"$segments"
}

# fetcharg SPEC: an SDT argument (8@%rdi, -8@%rax, 8@16(%rbp)) as a uprobe
# fetch argument.
fetcharg() {
	local size=${1%%@*} op=${1#*@} type reg
	case ${size#-} in 1) type=u8 ;; 2) type=u16 ;; 4) type=u32 ;; *) type=u64 ;; esac
	reg() {
		case $1 in
		%r[0-9] | %r1[0-5]) echo "$1" ;;
		%r[a-d]x | %e[a-d]x) echo "%${1:2:2}" ;;
		%rsi | %esi | %rdi | %edi | %rbp | %ebp | %rsp | %esp) echo "%${1:2:2}" ;;
		*) return 1 ;;
		esac
	}
	case $op in
	%*) reg=$(reg "$op") || return 1; echo "$reg:$type" ;;
	*'('*')')
		local disp=${op%%(*} r=${op#*(}
		reg=$(reg "${r%)}") || return 1
		echo "+${disp:-0}($reg):$type"
		;;
	*) return 1 ;;
	esac
}

n=0
skipped=0
while read -r name loc base sem args; do
	[ "$name" = "$event" ] || continue
	# Prelink-style adjustment: the note's base against the section's.
	if [ -n "$sdt_base" ]; then loc=$((loc + sdt_base - base)); fi
	offset=$(file_offset "$loc" x)
	if [ -z "$offset" ] ||
		[ "$(od -An -tx1 -j $((offset)) -N1 "$exe" | tr -d ' ')" != 90 ]; then
		skipped=$((skipped + 1))
		continue
	fi
	def="p:$group/${name}__$n $exe:$offset"
	if [ $((sem)) -ne 0 ]; then
		sem_offset=$(file_offset "$sem")
		[ -n "$sem_offset" ] || { skipped=$((skipped + 1)); continue; }
		def="$def($sem_offset)"
	fi
	set -- $names
	for a in $args; do
		[ $# -gt 0 ] || die "$name has more SDT arguments than probes/heapprobe.d names: is $exe from another heapprobe version?"
		f=$(fetcharg "$a") || die "cannot read SDT argument '$a' of $name"
		def="$def $1=$f"
		shift
	done
	echo "$def" >>$tracefs/uprobe_events || die "the kernel refused: $def"
	events+=("${name}__$n")
	n=$((n + 1))
done <<<"$notes"
[ "$n" -gt 0 ] || die "no valid site of heapprobe:$event in $exe"
echo "Tracing PID $pid: $n sites of heapprobe:$event ($skipped bogus skipped)."

mkdir -p "$out" || die "cannot create $out"
data=$out/perf.data
# perf starts with its events disabled and enables them on request, so
# "Recording" is printed only once events are really being recorded.
fifos=$(mktemp -d) || die "mktemp failed"
mkfifo "$fifos/ctl" "$fifos/ack" || die "mkfifo failed"
# Ctrl-C stops perf (which writes perf.data) and the sleep; the report
# below still runs.
trap ':' INT
"$perf" record -q -T --call-graph "$callgraph" -e "$group:${event}__*" -p "$pid" \
	-D -1 --control "fifo:$fifos/ctl,$fifos/ack" -o "$data" -- sleep "$seconds" &
perf_pid=$!
exec 8>"$fifos/ctl" 9<"$fifos/ack"
echo enable >&8
read -r -t 60 ack <&9 || die "perf did not start recording"
exec 8>&- 9<&-
rm -rf "$fifos"
echo "Recording for $seconds s... Hit Ctrl-C to end."
wait "$perf_pid"
status=$?
while kill -0 "$perf_pid" 2>/dev/null; do wait "$perf_pid"; done
perf_pid=
trap 'cleanup; exit 130' INT
[ -s "$data" ] || die "perf record wrote nothing (exit $status)"
cleanup

if command -v rustfilt >/dev/null 2>&1; then
	demangle() { rustfilt; }
elif command -v c++filt >/dev/null 2>&1; then
	demangle() { c++filt | sed -E 's/::h[0-9a-f]{16}//g; s/\[[0-9a-f]{1,16}\]::/::/g'; }
else
	demangle() { cat; }
fi

# Fold: "comm;outermost;...;innermost weight" per sample, summed. Every line
# must be an event (perf right-aligns event names, so it may start with
# spaces), a frame (a tab, then an address), a lost-events line or blank:
# anything else stops the script, quoting the line.
#
# perf record can write a sample twice (it reads its ring buffer's head
# twice; see heapprobe's DEVELOPERS.md): the copy is identical, thread and
# nanosecond timestamp included, which two real samples never are. Each
# sample is kept once, and the copies are counted. The capture for `cargo
# xtask fold` is written here too, without the copies, in the format of
# `perf script -F event,trace,ip,sym`.
folded=$out/$event.folded
capture=$out/$event.txt
"$perf" script -i "$data" --no-demangle --show-lost-events --ns -F comm,tid,time,event,trace,ip,sym 2>/dev/null |
	awk -v w="$weight" -v summary="$out/.summary" -v capture="$capture.body" '
	function flush() {
		if (!insample) return
		insample = 0
		if (time != seen_time) { delete seen; seen_time = time }
		if (block in seen) { copies++; return }
		seen[block] = 1
		s = comm
		for (i = nf; i >= 1; i--) s = s ";" f[i]
		stacks[s] += v
		events++; total += v
		print body "\n" > capture
	}
	function bad(why) {
		printf "perf-flamegraph.sh: line %d of perf script: %s: \"%s\"\n", NR, why, $0 > "/dev/stderr"
		failed = 1
		exit 1
	}
	/^[ \t]*$/ { flush(); next }
	/^PERF_RECORD_LOST lost [0-9]+$/ { flush(); lost += $NF; print > capture; next }
	/^[ \t]/ && $1 ~ /^[0-9a-f]+$/ {
		if (!insample) bad("a stack frame outside any event")
		nf++; sym = $2; sub(/\+0x[0-9a-f]+$/, "", sym); f[nf] = sym
		block = block "\n" $0; body = body "\n" $0; next
	}
	{
		# COMM TID TIME: GROUP:EVENT: (ADDRESS) NAME=VALUE ...
		at = 0
		for (i = 1; i <= NF; i++) if ($i ~ /^[^:]+:[^:]+:$/) { at = i; break }
		if (at < 4 || $(at + 1) !~ /^\([0-9a-f]+\)$/ || $(at - 2) !~ /^[0-9]+$/ || $(at - 1) !~ /^[0-9]+\.[0-9]+:$/)
			bad("not an event, a frame, a lost-events line or blank")
		flush()
		insample = 1; nf = 0; v = 1
		comm = $1
		for (i = 2; i < at - 2; i++) comm = comm " " $i
		time = $(at - 1)
		block = $0
		# The line from the event on: the fields before it removed one by one.
		body = $0
		for (i = 1; i < at; i++) sub(/^[ \t]*[^ \t]+/, "", body)
		sub(/^[ \t]+/, "", body)
		if (w != "") {
			v = -1
			for (i = at + 2; i <= NF; i++) if (index($i, w "=") == 1) v = substr($i, length(w) + 2) + 0
			if (v < 0) bad("no " w "= argument")
		}
	}
	END {
		if (failed) exit 1
		flush()
		for (s in stacks) printf "%s %d\n", s, stacks[s]
		printf "%d %d %d %d\n", events, total, lost, copies > summary
	}' | demangle | sort >"$folded"
[ "${PIPESTATUS[1]}" -eq 0 ] || die "could not fold perf script's output (above); the recording is in $data"
read -r events total lost copies <"$out/.summary"
rm -f "$out/.summary"

# perf's own count of what perf.data holds, to check the fold against: its
# sample records, and the samples it says the kernel dropped.
stats=$("$perf" report --stats -i "$data" 2>/dev/null)
samples=$(awk '/Aggregated stats/ { agg = 1 } agg && $1 == "SAMPLE" && $2 == "events:" { print $3; exit }' <<<"$stats")
lost_samples=$(awk '/ stats:$/ { per = 1 } per && $1 == "LOST_SAMPLES" && $2 == "events:" { n += $3 } END { print n + 0 }' <<<"$stats")
[ "$lost_samples" -gt "$lost" ] && lost=$lost_samples

# The capture for `cargo xtask fold` elsewhere (symbols are resolved here),
# headed by perf's count so that the fold is checked against it too (and the
# number of copies left out of the capture).
{
	echo "# heapprobe-capture samples=${samples:-0} lost=$lost copies=$copies"
	cat "$capture.body"
} >"$capture"
rm -f "$capture.body"

echo "heapprobe:$event: $events events, $total $unit"
echo "perf.data holds ${samples:-0} samples; perf lost $lost"
if [ "$copies" -gt 0 ]; then
	echo "perf wrote $copies of them twice (identical, nanosecond included): each counted once"
fi
status=0
if [ "${samples:-0}" -ne $((events + copies)) ]; then
	echo "WARNING: perf script gave $events events of the ${samples:-0} samples in perf.data: the totals above are wrong" >&2
	status=1
fi
# More than 1% lost fails (as `cargo xtask trace --max-lost` does by default).
if [ $((lost * 100)) -gt $((samples + lost)) ]; then
	echo "WARNING: perf lost $lost of $((samples + lost)) events (its buffer overflowed): the totals above are too low" >&2
	status=1
fi
echo "Wrote the recording, the folded stacks (weight: $unit) and the capture:"
echo "  $data"
echo "  $folded"
echo "  $capture"
svg=$out/$event.svg
if command -v inferno-flamegraph >/dev/null 2>&1; then
	inferno-flamegraph --title "heapprobe:$event of $pid ($unit)" <"$folded" >"$svg" &&
		echo "and the flame graph:" && echo "  $svg"
elif command -v flamegraph.pl >/dev/null 2>&1; then
	flamegraph.pl --title "heapprobe:$event of $pid ($unit)" <"$folded" >"$svg" &&
		echo "and the flame graph:" && echo "  $svg"
else
	echo "No inferno-flamegraph here. For the SVG, on any machine with cargo:"
	echo "  cargo install inferno && inferno-flamegraph < $event.folded > $event.svg"
	echo "or, in a heapprobe checkout (same SVG and summary as cargo xtask trace,"
	echo "checked against the count atop the capture):"
	echo "  cargo xtask fold $event.txt --event $event"
	echo "Or browse the recording here:"
	echo "  $perf report -i $data"
fi
exit $status
