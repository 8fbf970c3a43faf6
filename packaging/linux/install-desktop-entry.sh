#!/bin/sh
# Add Earshot to the desktop's application menu, for the current user, from the unpacked
# bundle this script sits in (or remove it again with --remove). No root needed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
apps="${XDG_DATA_HOME:-$HOME/.local/share}/applications"
icons="${XDG_DATA_HOME:-$HOME/.local/share}/icons/hicolor/256x256/apps"
if [ "${1:-}" = "--remove" ]; then
    rm -f "$apps/earshot.desktop" "$icons/earshot.png"
    echo "removed the Earshot menu entry"
    exit 0
fi
[ -x "$here/earshot" ] || { echo "no earshot executable in $here" >&2; exit 1; }
mkdir -p "$apps" "$icons"
cp "$here/earshot.png" "$icons/earshot.png"
sed -e "s|^Exec=earshot\$|Exec=\"$here/earshot\"|" -e "s|^Icon=earshot\$|Icon=$icons/earshot.png|" \
    "$here/earshot.desktop" > "$apps/earshot.desktop"
chmod 0644 "$apps/earshot.desktop"
echo "added $apps/earshot.desktop (Exec: $here/earshot)"
