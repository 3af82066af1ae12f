from hakuriver_host.main import run

run()
