"""The run layer: run-folder files, jobs, their cache, claim, archive, result rows and failure report."""
