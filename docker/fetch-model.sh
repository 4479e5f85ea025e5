#!/bin/sh
# fetch-model SOURCES DIR: puts every file that SOURCES lists into DIR, checked against its sha256.
#
# SOURCES has one "<sha256> <file name> <url>" line per file ('#' starts a comment). A file already in
# DIR with the right sha256 is kept (a pre-filled volume needs no network); anything else is
# downloaded to a temporary name, checked, and only then moved into place. A wrong checksum stops
# with an error, so the inference service never starts on a model it was not meant to run.
set -eu

die() {
    echo "fetch-model: $*" >&2
    exit 1
}

[ $# -eq 2 ] || die "usage: fetch-model SOURCES DIR"
sources=$1
dir=$2
[ -r "$sources" ] || die "cannot read the source list $sources"
mkdir -p "$dir"

count=0
while read -r sha name url rest; do
    case $sha in '' | '#'*) continue ;; esac
    [ -n "$name" ] && [ -n "$url" ] && [ -z "$rest" ] ||
        die "$sources: expected '<sha256> <file name> <url>', got: $sha $name $url $rest"
    case $name in */* | .*) die "$sources: file name '$name' must be a plain name" ;; esac
    case $sha in
        *[!0-9a-f]*) die "$sources: '$sha' for $name is not a sha256 (64 lowercase hex digits)" ;;
    esac
    [ ${#sha} -eq 64 ] || die "$sources: '$sha' for $name is not a sha256 (64 lowercase hex digits)"
    target=$dir/$name
    if [ -f "$target" ] && echo "$sha  $target" | sha256sum -c --status -; then
        echo "fetch-model: $name present, sha256 ok"
    else
        echo "fetch-model: downloading $name from $url"
        curl -fsSL --retry 5 --retry-delay 2 -o "$target.part" "$url" || die "download of $url failed"
        if ! echo "$sha  $target.part" | sha256sum -c --status -; then
            actual=$(sha256sum "$target.part" | cut -d' ' -f1)
            rm -f "$target.part"
            die "$name: sha256 is $actual, expected $sha; refusing to use it"
        fi
        mv -f "$target.part" "$target"
        echo "fetch-model: $name downloaded, sha256 ok"
    fi
    count=$((count + 1))
done <"$sources"
[ "$count" -gt 0 ] || die "$sources lists no file"
