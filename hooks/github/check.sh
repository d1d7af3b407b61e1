#!/usr/bin/env bash
# The composite action's check (hooks/github/action.yml): llmmem check on every path given, with
# annotations, job summary and step outputs; with LLMMEM_DIFF_BASE, also the memory change against
# that commit (llmmem diff, markdown in the job summary, output regressed=true|false).
# Inputs come only through the environment: LLMMEM (the command), LLMMEM_PATHS (whitespace-separated),
# LLMMEM_ARGS, LLMMEM_DIFF_BASE; the runner's RUNNER_TEMP, GITHUB_OUTPUT, GITHUB_STEP_SUMMARY.
set -uo pipefail

llmmem=${LLMMEM:-llmmem}
tmp=${RUNNER_TEMP:-$(mktemp -d)}
# The folder's name goes into GITHUB_OUTPUT as name=value: a line break in it would add an output.
case "$tmp" in
    *$'\n'* | *$'\r'*) echo "llmmem: error: RUNNER_TEMP holds a line break; refusing to write step outputs under it." >&2; exit 2 ;;
esac
# diff-base reaches git (fetch, worktree) and the log: a commit or ref name only. A leading '-' would be
# read as an option (git fetch --upload-pack=...), a ':' or line break could form a workflow command.
if [ -n "${LLMMEM_DIFF_BASE:-}" ] && ! [[ "$LLMMEM_DIFF_BASE" =~ ^[A-Za-z0-9_][A-Za-z0-9._/@{}~^-]*$ ]]; then
    echo "llmmem: error: diff-base must be a commit or a ref name (letters, digits and ._/@{}~^-, not starting with '-'); got ${#LLMMEM_DIFF_BASE} characters that are not." >&2
    exit 2
fi
read -r -d '' -a paths <<< "${LLMMEM_PATHS:-.}" || true
read -r -d '' -a extra <<< "${LLMMEM_ARGS:-}" || true
head_json="$tmp/llmmem-head.json"

"$llmmem" check "${paths[@]}" --format github --json-out "$head_json" "${extra[@]}"
status=$?

if [ -n "${LLMMEM_DIFF_BASE:-}" ] && [ "$status" -le 1 ]; then
    base_tree="$tmp/llmmem-base"
    base_json="$tmp/llmmem-base.json"
    rm -rf "$base_tree"
    if ! git cat-file -e "${LLMMEM_DIFF_BASE}^{commit}" 2>/dev/null; then
        git fetch --quiet --depth=1 origin -- "$LLMMEM_DIFF_BASE" || true
    fi
    if git worktree add --quiet --detach -- "$base_tree" "$LLMMEM_DIFF_BASE"; then
        (cd "$base_tree" && "$llmmem" check "${paths[@]}" --format json --json-out "$base_json" "${extra[@]}" > /dev/null)
        base_status=$?
        if [ "$base_status" -le 1 ]; then
            "$llmmem" diff "$base_json" "$head_json" --format markdown > "$tmp/llmmem-diff.md"
            diff_status=$?
            if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
                { echo "### llmmem: memory change against ${LLMMEM_DIFF_BASE:0:12}"; echo; cat "$tmp/llmmem-diff.md"; } >> "$GITHUB_STEP_SUMMARY"
            fi
            cat "$tmp/llmmem-diff.md"
            regressed=$([ "$diff_status" -eq 1 ] && echo true || echo false)
            if [ -n "${GITHUB_OUTPUT:-}" ]; then
                echo "regressed=$regressed" >> "$GITHUB_OUTPUT"
                echo "diff=$tmp/llmmem-diff.md" >> "$GITHUB_OUTPUT"
            fi
            if [ "$diff_status" -gt "$status" ]; then
                status=$diff_status
            fi
        else
            echo "::notice title=llmmem::no memory diff: llmmem check failed on the base commit ${LLMMEM_DIFF_BASE} (exit $base_status)."
        fi
        git worktree remove --force "$base_tree" || true
    else
        echo "::notice title=llmmem::no memory diff: the base commit ${LLMMEM_DIFF_BASE} is not in this checkout (use actions/checkout with fetch-depth: 0)."
    fi
fi
exit "$status"
