set -u
partitions=$1
printf '@clock\t%s\t%s\n' "$(date +%s)" "$(date +%Y-%m-%dT%H:%M:%S)"
echo '@sinfo'
sinfo --noheader --Format="$2" 2>&1
rc=$?
echo "@rc $rc"
# No controller: every other query would block as long again, for nothing.
if [ "$rc" -ne 0 ]; then echo '@end'; exit 0; fi
echo '@queue'
if [ -n "$partitions" ]; then
    squeue --noheader --states=PENDING,RUNNING --partition="$partitions" --Format="$4" 2>&1
    echo "@rc $?"
    echo '@nodes'
    # Grouped (no --Node): one line per set of alike nodes, their names as a hostlist.
    sinfo --noheader --partition="$partitions" --Format="$5" 2>&1
    echo "@rc $?"
else
    echo "@rc 0"
fi
echo '@config'
scontrol show config 2>&1 | grep -E '^(PrivateData|MaxArraySize) '
echo '@resv'
scontrol show reservation --oneliner 2>&1
echo '@testonly'
if [ "$3" = test ]; then
    sbatch --test-only 2>&1
    echo "@rc $?"
else
    echo "@rc -"
fi
echo '@end'
