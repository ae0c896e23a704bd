"""The spool side: finding files, knowing them across renames, and reading complete lines."""
