#!/bin/sh
# AWS_LAMBDA_EXEC_WRAPPER of the events function: Lambda's managed Python runtime buffers every answer, so this
# function runs its own Runtime API loop instead (handlers/streamruntime.py), with the managed runtime's
# interpreter and the bundle's packages. The managed runtime's command line ("$@") is not run.
cd "${LAMBDA_TASK_ROOT:-/var/task}" || exit 1
export PYTHONPATH="${LAMBDA_TASK_ROOT:-/var/task}${PYTHONPATH:+:$PYTHONPATH}"
exec "${LAMBDA_PYTHON:-python3}" -m handlers.streamruntime
