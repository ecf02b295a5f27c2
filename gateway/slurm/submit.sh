set -u
# noclobber: `>` creates a claim only if it does not exist yet (O_EXCL), so two
# submissions can never both claim one item of the site's record.
set -C
# No umask change: sbatch hands the current umask to the job (SLURM_UMASK),
# and mkdir -p below creates the user's directories. mktemp -d is 0700 anyway.
workspace=$(mktemp -d "${TMPDIR:-/tmp}/aif-submit.XXXXXXXXXX") || {
    echo "aif-submit: cannot create a temporary directory" >&2
    exit 97
}
# Always remove the scripts, also when the connection drops.
trap 'rm -rf -- "$workspace"' EXIT
# The site's MaxArraySize, asked at once when the caller says the bundle holds an array
# ($2): the controller answers while the bundle is unpacked and read.
max_array=0
asked=
ask_max_array() {
    # Its own output to /dev/null: it must not hold the session open if the program ends first.
    { scontrol show config | sed -n 's/^MaxArraySize *= *\([0-9]*\).*/\1/p' >|"$workspace/max-array"; } \
        2>/dev/null </dev/null >/dev/null &
    asked=$!
}
[ "${2:-}" != arrays ] || ask_max_array
# bash runs these only once the running command (sbatch) returns: they only note
# the signal (and leave a mark for the other workers), so the answer of an sbatch
# that ran is still written to the record. Each worker sets them in its own shell.
stop=
catch_stops() {
    trap 'stop=129; echo 129 >|"$workspace/stop"' HUP
    trap 'stop=130; echo 130 >|"$workspace/stop"' INT
    trap 'stop=141; echo 141 >|"$workspace/stop"' PIPE
    trap 'stop=143; echo 143 >|"$workspace/stop"' TERM
}
catch_stops
if ! tar -x -f - -C "$workspace" --no-same-owner 2>|"$workspace/tar-errors"; then
    echo "aif-submit: cannot unpack the submission bundle: $(cat -- "$workspace/tar-errors")" >&2
    exit 97
fi
one_line() {
    message=${1//$'\r'/}
    message=${message//$'\n'/ / }
    message=${message//$'\t'/ }
}
journal=
[ -f "$workspace/journal" ] && IFS= read -r -d '' journal <"$workspace/journal"
# The items, read in order from two files (a few files to unpack, not a few per job:
# creating files is what a slow /tmp makes expensive). `items` holds per item, each
# NUL-terminated: S or A, its workdir, the count of its sbatch arguments and each
# argument; then a job's claim, token and aif id (all empty without a claim), or an
# array's token, its member count and each member's claim, token and aif id.
# `scripts` holds each item's script, NUL-terminated (sbatch reads it on stdin).
# Every workdir (and the record's directory) is made first, in ONE mkdir: a fork per
# job would cost more than its sbatch. An array's members make their own directories
# when their tasks start: here only the array's own is made (one, not one per task).
# Lists are flat and read in order (bash indexes lists sequentially fast, but slices
# of them slowly).
workdirs=()
wanted=()
[ -n "$journal" ] && [ ! -d "$journal" ] && wanted+=("$journal")
scripts=()
args=()
args_from=()
args_to=()
claims=()
tokens=()
aif_ids=()
fields=()
arrays=()
ends=()
slots=() # the item's first answer slot (an array takes one per member)
answers_total=0
count=0
# Counts are checked to be numbers before bash computes with them (arithmetic on a
# string could run it), all before anything is claimed.
malformed() {
    echo "aif-submit: the submission bundle is malformed: $1" >&2
    exit 97
}
number() {
    case $1 in '' | *[!0-9]*) malformed "$2 is not a count" ;; esac
}
[ -f "$workspace/items" ] && [ -f "$workspace/scripts" ] || malformed "no items or no scripts"
exec 3<"$workspace/items" 4<"$workspace/scripts"
while IFS= read -r -d '' kind <&3; do
    case $kind in S | A) ;; *) malformed "item $count is neither S nor A" ;; esac
    IFS= read -r -d '' workdir <&3
    workdirs[count]=$workdir
    [ -n "$workdir" ] && [ ! -d "$workdir" ] && wanted+=("$workdir")
    IFS= read -r -d '' n <&3
    number "$n" "item $count's argument count"
    args_from[count]=${#args[@]}
    for ((a = 0; a < n; a++)); do
        IFS= read -r -d '' arg <&3
        args+=("$arg")
    done
    args_to[count]=${#args[@]}
    IFS= read -r -d '' script <&4
    scripts[count]=$script
    slots[count]=$answers_total
    if [ "$kind" = A ]; then
        IFS= read -r -d '' field <&3
        arrays[count]=${#fields[@]}
        fields+=("$field")
        IFS= read -r -d '' members <&3
        number "$members" "item $count's member count"
        for ((m = 0; m < 3 * members; m++)); do
            IFS= read -r -d '' field <&3
            fields+=("$field")
        done
        ends[count]=${#fields[@]}
        answers_total=$((answers_total + members))
    else
        IFS= read -r -d '' claims[count] <&3
        IFS= read -r -d '' tokens[count] <&3
        IFS= read -r -d '' aif_ids[count] <&3
        answers_total=$((answers_total + 1))
    fi
    count=$((count + 1))
done
exec 3<&- 4<&-
# Only with an array: asked while the directories are made, if not asked yet.
[ "${#arrays[@]}" -eq 0 ] || [ -n "$asked" ] || ask_max_array
if [ "${#wanted[@]}" -gt 0 ]; then
    mkdir -p -- "${wanted[@]}" 2>|"$workspace/mkdir-errors" </dev/null || true
fi
if [ -n "$asked" ]; then
    wait "$asked" 2>/dev/null
    IFS= read -r max_array 2>/dev/null <"$workspace/max-array"
    [ -n "$max_array" ] || max_array=0
fi
# Claims ITEM ($1) for token $2 and aif id $3 (an array member: array token $4, task $5):
# the intent, BEFORE sbatch, created exclusively. Else answers slot $6 why not, and fails.
claim() {
    record=$journal/$1
    printf 'intent\t%s\t%s%s\n' "$2" "$3" "${4:+$'\t'$4$'\t'$5}" 2>/dev/null >"$record" && return 0
    if [ -f "$record" ]; then
        held=
        IFS= read -r held <"$record" || true
        one_line "$held"
        printf '%d\t%d\t%s\n' "$6" -2 "$message"
    else
        printf '%d\t%d\t%s\n' "$6" -3 "cannot write the site record $record: not submitted"
    fi
    return 1
}
# Runs sbatch with "$@" and the item's script on stdin (a here-string: bash 5.1 and
# later pass it through a pipe, no file), and sets rc and message (its answer, on
# one line). Not cd-ing anywhere: sbatch's working directory becomes the job's
# submit directory. Files instead of $(...) for the answers: one fork less per item.
run_sbatch() {
    rc=0
    if [ -n "$workdir" ] && [ ! -d "$workdir" ]; then
        # The batch mkdir failed for this one: say why, for this item only.
        mkdir -p -- "$workdir" 2>|"$workspace/errors$worker" </dev/null || rc=$?
    fi
    if [ "$rc" -eq 0 ]; then
        sbatch --parsable "$@" <<<"${scripts[index]}" >|"$workspace/output$worker" \
            2>|"$workspace/errors$worker" || rc=$?
    fi
    output=
    if [ "$rc" -eq 0 ]; then
        IFS= read -r output <"$workspace/output$worker"
    else
        output=$(cat -- "$workspace/errors$worker")
        [ -n "$output" ] || output="exited with status $rc"
    fi
    one_line "$output"
}
# An array of specs: claim every member, ONE sbatch for the tasks claimed (a
# member another submission holds is left out, so it never runs), then answer
# each member ARRAYID_TASK, in the record first (its answer slots from
# slots[ITEM] on); an array over the site's MaxArraySize is not claimed, not sent.
submit_array() {
    at=${arrays[index]}
    array_token=${fields[at]}
    members=$(((ends[index] - at - 1) / 3))
    first=${slots[index]}
    if [ "$max_array" -gt 0 ] && [ "$members" -gt "$max_array" ]; then
        for ((m = 0; m < members; m++)); do
            printf '%d\t%d\t%s\n' "$((first + m))" -4 "$members tasks, over MaxArraySize=$max_array"
        done
        return
    fi
    tasks=()
    list=
    for ((m = 0, f = at + 1; m < members; m++, f += 3)); do
        if [ -n "${fields[f]}" ]; then
            claim "${fields[f]}" "${fields[f + 1]}" "${fields[f + 2]}" "$array_token" "$m" "$((first + m))" ||
                continue
        fi
        # Task lists as ranges, 0-3,5-9: one short argument whatever the size.
        case ,$list in
        *,$((m - 1))) list=$list-$m ;;
        *-$((m - 1))) list=${list%-*}-$m ;;
        *) list=$list${list:+,}$m ;;
        esac
        tasks+=("$m")
    done
    [ -n "$list" ] || return
    run_sbatch --array="$list" ${sbatch_args[@]+"${sbatch_args[@]}"}
    base=${message%%;*}
    answers=
    for m in "${tasks[@]}"; do
        answer=$message
        [ "$rc" -ne 0 ] || answer=${base}_$m
        claim=${fields[at + 1 + 3 * m]}
        [ -z "$claim" ] || printf 'answer\t%d\t%s\n' "$rc" "$answer" >>"$journal/$claim"
        answers=$answers$((first + m))$'\t'$rc$'\t'$answer$'\n'
    done
    # Every answer is in the record already: one write for all of them.
    printf '%s' "$answers"
}
# Items $1, $1 + $2, ... (worker $1 of $2), each answer to stdout.
run_items() {
    for ((index = $1; index < count; index += $2)); do
        [ -z "$stop" ] && [ ! -e "$workspace/stop" ] || break
        workdir=${workdirs[index]}
        sbatch_args=()
        for ((a = args_from[index]; a < args_to[index]; a++)); do
            sbatch_args+=("${args[a]}")
        done
        if [ -n "${arrays[index]+set}" ]; then
            submit_array
            continue
        fi
        this=${slots[index]}
        record=
        if [ -n "${claims[index]}" ]; then
            # An item with no intent was provably never sent.
            claim "${claims[index]}" "${tokens[index]}" "${aif_ids[index]}" "" "" "$this" || continue
        fi
        run_sbatch ${sbatch_args[@]+"${sbatch_args[@]}"}
        # The answer goes to the site's record first, then to us.
        [ -z "$record" ] || printf 'answer\t%d\t%s\n' "$rc" "$message" >>"$record"
        printf '%d\t%d\t%s\n' "$this" "$rc" "$message"
    done
}
# $1 sbatch at a time (the site's profile; 1 if not given). The other workers
# answer into files, passed on when done: one writer on stdout.
workers=${1:-1}
case $workers in '' | *[!0-9]* | 0*) workers=1 ;; esac
[ "$workers" -le "$count" ] || workers=$count
others=()
for ((w = 1; w < workers; w++)); do
    (
        catch_stops
        worker=$w
        run_items "$w" "$workers"
        exit 0
    ) >|"$workspace/answers$w" &
    others[w]=$!
done
worker=
run_items 0 "$workers"
for ((w = 1; w < workers; w++)); do
    # A trapped signal ends wait early: wait again, the workspace must outlive it.
    while :; do
        wait "${others[w]}" && break
        [ "$?" -gt 128 ] && kill -0 "${others[w]}" 2>/dev/null || break
    done
    text=
    IFS= read -r -d '' text <"$workspace/answers$w" || true
    printf '%s' "$text"
done
# A worker's signal stops the whole program the same way.
[ -n "$stop" ] || [ ! -e "$workspace/stop" ] || IFS= read -r stop <"$workspace/stop" || true
[ -z "$stop" ] || exit "$stop"
exit 0
