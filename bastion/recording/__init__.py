"""Session recordings: the binary format (pure), the hot-path writer, and replay.

`format` is the codec, `writer` appends frames while a session runs, and the replay side
(`reader`, `render`, `export`) turns a recording back into screens, transcripts and
asciicast files on demand.
"""
