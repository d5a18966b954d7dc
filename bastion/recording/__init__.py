"""Session recordings: the binary format (pure), the hot-path writer, and replay.

`format` is the codec, `writer` appends frames while a session runs and `seal` signs
its hash; `replay` reads a recording back, `render` (with `terminal`, `snapshot` and the
`indexfile` keyframe cache) shows the screen at any moment, `transcript`/`search` turn
it into text lines, `export` into asciicast or raw bytes, and `player` plays it in a
terminal.
"""
