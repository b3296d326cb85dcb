"""Deployment files rendered from the jinja2 templates of ``templates/``: the same pgbouncer.ini,
SQL and settings serve the local cluster, docker-compose and Kubernetes."""
