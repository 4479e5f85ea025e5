"""Checks that the deployment files agree with the code they deploy (run by scripts/check-deploy).

Schemas say a manifest is well formed; this says it is *right* for this project:

- images: every project image a manifest uses is a target of docker/Dockerfile and an entry of the
  kustomization's `images:`; the binaries the Dockerfile installs are bin targets of the workspace;
  .dockerignore lets in what the build needs and keeps out build output and secrets;
- command lines: every flag a manifest passes to a binary is one the binary accepts, and the binary
  itself accepts the whole command line (it is run with `--help` appended, so clap parses every flag
  and value before printing help); every environment variable is one the binary (or the entrypoint
  script in front of it) reads, and its value parses as that flag's value;
- entrypoint scripts (docker/dataflow-cluster.sh) are run for every process index with stand-ins
  for the binaries, and the host file they write must name the pods of that very workload through
  its headless service;
- ports: containerPorts, EXPOSE, listen addresses, probes, Services, Prometheus annotations;
- paths: every absolute path a container is given lies on one of its volumes or in its image, and a
  file on a volume an init container fills is one that init container makes;
- references: ConfigMap/Secret keys, PVCs, Service hosts (`kafka-0.kafka:9092`), the Kafka quorum,
  topic names, Mongo indexes and HTTP routes against the iot-schema crate (as its `contract` binary
  prints them), replicas against partitions and process counts;
- NetworkPolicies: every connection a pod makes is allowed, and every client label a pod carries is
  one it uses (least privilege); Pod Security "restricted" and resource requests/limits.

Then it proves it can fail: it breaks the manifests in several known ways (a flag, an env var, a
port, a mount, a label...) and each break must be reported.

usage: PYTHONPATH=scripts python -m check_deploy --manifests BUILT.yaml --bin-dir target/debug
"""

# One module per concern: common (root, problem list), dockerfile (docker/Dockerfile, .dockerignore,
# images), binaries (--help and command lines), manifests (workloads, environment, hosts),
# entrypoint (wrapper scripts, host files), network (NetworkPolicies), contract (the Rust
# constants), pipeline and ansible (configuration against the contract), checks (the walk over the
# manifests), mutations (the proof it can fail), __main__ (the command line and the report).
