"""Where the large teachers live. Set the environment variable or pass --config.teacher.path."""

import os


def teacher_path(env_var: str, name: str) -> str:
  path = os.environ.get(env_var)
  if path:
    return path
  return f"<set {env_var} or --config.teacher.path to a local copy of {name}>"
