"""The bottom layer: what tasks, methods and the harness all share. It imports nothing of the project, so no
package above it can create a cycle: core <- tasks, core <- methods, core + tasks + methods <- harness."""
