set -u
failed=0
while [ "$#" -ge 2 ]; do
    if [ -n "$1" ]; then
        scancel --name="$1" -- "$2" || failed=$?
    else
        scancel -- "$2" || failed=$?
    fi
    shift 2
done
exit "$failed"
