"""Device profiles (YAML) shipped with edgedml; filled by the memory-budget work."""
