"""What every stage shares: the task's constants, configs, errors, data files, the one answer
rule, statistics and calibration, the teacher's prompt and the chat conversation, loading the
student, generation. Nothing here imports a stage package."""
