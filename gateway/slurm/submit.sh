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
# bash runs these only once the running command (sbatch) returns: they only note
# the signal, so the answer of an sbatch that ran is still written to the record.
stop=
trap 'stop=129' HUP
trap 'stop=130' INT
trap 'stop=141' PIPE
trap 'stop=143' TERM
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
# Every workdir (and the record's directory) first, in ONE mkdir: a fork per job
# would cost more than its sbatch.
workdirs=()
count=0
while :; do
    printf -v item '%s/%06d' "$workspace" "$count"
    [ -d "$item" ] || break
    workdir=
    IFS= read -r -d '' workdir <"$item/workdir"
    workdirs[count]=$workdir
    count=$((count + 1))
done
wanted=()
[ -n "$journal" ] && [ ! -d "$journal" ] && wanted+=("$journal")
for workdir in ${workdirs[@]+"${workdirs[@]}"}; do
    [ -n "$workdir" ] && [ ! -d "$workdir" ] && wanted+=("$workdir")
done
if [ "${#wanted[@]}" -gt 0 ]; then
    mkdir -p -- "${wanted[@]}" 2>|"$workspace/mkdir-errors" </dev/null || true
fi
index=0
while [ "$index" -lt "$count" ] && [ -z "$stop" ]; do
    printf -v item '%s/%06d' "$workspace" "$index"
    index=$((index + 1))
    workdir=${workdirs[index - 1]}
    sbatch_args=()
    while IFS= read -r -d '' arg; do
        sbatch_args+=("$arg")
    done <"$item/args"
    record=
    if [ -f "$item/claim" ]; then
        { IFS= read -r -d '' claim; IFS= read -r -d '' token; IFS= read -r -d '' aif_id; } <"$item/claim"
        record=$journal/$claim
        # The intent, BEFORE sbatch: an item with no intent was provably never sent.
        if ! printf 'intent\t%s\t%s\n' "$token" "$aif_id" 2>/dev/null >"$record"; then
            held=
            if [ -f "$record" ]; then
                IFS= read -r held <"$record" || true
                one_line "$held"
                printf '%d\t%d\t%s\n' "$((index - 1))" -2 "$message"
            else
                printf '%d\t%d\t%s\n' "$((index - 1))" -3 \
                    "cannot write the site record $record: not submitted"
            fi
            continue
        fi
    fi
    # Not cd-ing anywhere: sbatch's working directory becomes the job's
    # submit directory, and the temporary directory is about to vanish.
    # Files instead of $(...) for the answers: one fork less per item.
    rc=0
    if [ -n "$workdir" ] && [ ! -d "$workdir" ]; then
        # The batch mkdir failed for this one: say why, for this item only.
        mkdir -p -- "$workdir" 2>|"$workspace/errors" </dev/null || rc=$?
    fi
    if [ "$rc" -eq 0 ]; then
        sbatch --parsable ${sbatch_args[@]+"${sbatch_args[@]}"} "$item/aif-job.sh" \
            >|"$workspace/output" 2>|"$workspace/errors" </dev/null || rc=$?
    fi
    output=
    if [ "$rc" -eq 0 ]; then
        IFS= read -r output <"$workspace/output"
    else
        output=$(cat -- "$workspace/errors")
        [ -n "$output" ] || output="exited with status $rc"
    fi
    one_line "$output"
    # The answer goes to the site's record first, then to us.
    [ -z "$record" ] || printf 'answer\t%d\t%s\n' "$rc" "$message" >>"$record"
    printf '%d\t%d\t%s\n' "$((index - 1))" "$rc" "$message"
done
[ -z "$stop" ] || exit "$stop"
exit 0
