"""Running requests: the lifecycle (`lifecycle`), one run (`execute`, `hooks`), and the
process runner that holds many runs at once (`runner`). See this package's README."""
