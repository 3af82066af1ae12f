from hakuriver_runner.main import run

run()
