"""Pipeline stages, one module each, run as ``python -m pipeline.stages.<stage>``: prepare, train, evaluate,
tables.  Each parses its command line, builds typed configs, calls the library, and writes its outputs atomically."""
