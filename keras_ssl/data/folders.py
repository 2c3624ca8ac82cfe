"""What a `folder:PATH` dataset leaves unread, said in one warning.

A folder of WAV clips reads only `.wav` files and a folder of images only
`.png`/`.jpg`/`.jpeg` files, each in the class sub-folders when there are any
(or at the top level, or in `train/`/`test/`). Anything else under PATH (the
PNGs beside the WAVs, a WAV beside the class folders, a nested folder) would
otherwise be ignored silently: `warn_unread` counts it by extension.
"""

import collections
import os
import warnings

# Top-level files that describe the dataset rather than hold examples: not counted as
# ignored (speakers.csv is read by audio folders; the spoken-digits maker writes README.txt).
METADATA_FILES = ("speakers.csv",)
METADATA_PREFIXES = ("readme", "license", "licence")


def unread_files(root, read_paths):
    """Paths of the regular files under `root` (any depth) that are not in `read_paths`,
    leaving out hidden files and folders (`.DS_Store`, `.git/`), and at the top
    level `METADATA_FILES` and README/LICENSE files. Sorted."""
    read = {os.path.normpath(os.path.abspath(p)) for p in read_paths}
    unread = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        top = os.path.normpath(directory) == os.path.normpath(root)
        for name in files:
            if name.startswith(".") or (top and (name in METADATA_FILES
                                                 or name.lower().startswith(METADATA_PREFIXES))):
                continue
            path = os.path.join(directory, name)
            if os.path.normpath(os.path.abspath(path)) not in read:
                unread.append(path)
    return sorted(unread)


def describe_by_extension(paths):
    """`3 .png, 1 .txt, 1 without extension`, most frequent first."""
    counts = collections.Counter(os.path.splitext(p)[1].lower() or "without extension" for p in paths)
    return ", ".join(f"{n} {ext}" for ext, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def warn_unread(root, read_paths, what):
    """One warning when files under `root` are not among `read_paths`: how many, by
    extension, two examples, and what the folder is read as (`what`, e.g.
    "audio: only .wav files in the class folders")."""
    unread = unread_files(root, read_paths)
    if not unread:
        return unread
    examples = ", ".join(os.path.relpath(p, root) for p in unread[:2])
    warnings.warn(f"folder:{root}: {len(unread)} file(s) are not read ({describe_by_extension(unread)}; e.g. "
                  f"{examples}): it is read as {what}; move them out, or into their own folder dataset")
    return unread
