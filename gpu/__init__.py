"""One-shot jobs for a lent GPU machine: pack here, receive and run there (docs/gpu.md)."""
