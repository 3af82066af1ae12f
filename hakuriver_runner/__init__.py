"""The HakuRiver Runner: dials the Host and runs tasks in Docker containers."""
