"""What touches the world outside state_dir: registry, installs, the tree, services, backups, sandboxes, probes."""
