"""The `tokenreel` command: one entry point over the indexing job, the service and the tools."""
