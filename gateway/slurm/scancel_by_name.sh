set -u
failed=0
checked=
while [ "$#" -ge 2 ]; do
    name=$1
    id=$2
    shift 2
    case $id in
    *_*)
        # One task of an array of specs. `scancel --name` would signal every pending
        # task with it (recorded on 22.05), so the array's name is checked here by
        # squeue, just before, and the task is cancelled by its id alone.
        base=${id%%_*}
        if [ "$checked" != "$base" ]; then
            names=$(squeue --noheader --states=all --jobs="$base" --format=%j 2>/dev/null) || names=
            same=$names
            while IFS= read -r line; do
                [ "$line" = "$name" ] || same=
            done <<<"$names"
            if [ -z "$same" ] || [ -z "$name" ]; then
                echo "aif-cancel: job $base is not $name now: $id not signalled" >&2
                failed=1
                continue
            fi
            checked=$base
        fi
        scancel -- "$id" || failed=$?
        ;;
    *)
        if [ -n "$name" ]; then
            scancel --name="$name" -- "$id" || failed=$?
        else
            scancel -- "$id" || failed=$?
        fi
        ;;
    esac
done
exit "$failed"
