#!/usr/bin/env python3
"""A small demo ECS account in moto for `scripts/demo.sh`: two clusters with container instances and
running tasks, ECS events for all of it in an SQS queue (moto emits none itself), then light churn —
a task stops and is replaced every few seconds, now and then an instance drains — until killed.

Environment: AWS_ENDPOINT_URL (moto), QUEUE (default blox-demo).
"""

import itertools
import json
import os
import random
import time
import uuid
from datetime import datetime, timezone

import boto3

ENDPOINT = os.environ["AWS_ENDPOINT_URL"]
QUEUE = os.environ.get("QUEUE", "blox-demo")
REGION = os.environ.get("AWS_REGION", "us-east-1")
CLUSTERS = {"demo-prod": 3, "demo-dev": 2}

session = boto3.session.Session(aws_access_key_id="demo", aws_secret_access_key="demo", region_name=REGION)
ecs = session.client("ecs", endpoint_url=ENDPOINT)
ec2 = session.client("ec2", endpoint_url=ENDPOINT)
sqs = session.client("sqs", endpoint_url=ENDPOINT)
versions = {}


def iso(value):
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return value


def envelope(detail_type, arn, detail):
    versions[arn] = versions.get(arn, 0) + 1
    detail = {k: iso(v) for k, v in detail.items()}
    detail["version"] = versions[arn]
    return json.dumps({
        "version": "0", "id": str(uuid.uuid4()), "detail-type": detail_type, "source": "aws.ecs",
        "account": arn.split(":")[4], "time": iso(datetime.now(timezone.utc)), "region": REGION,
        "resources": [arn], "detail": detail,
    }, default=str)


def publish(queue_url, bodies):
    for i in range(0, len(bodies), 10):
        entries = [{"Id": str(n), "MessageBody": b} for n, b in enumerate(bodies[i:i + 10])]
        sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)


def task_events(cluster, arns):
    if not arns:
        return []
    tasks = ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"]
    return [envelope("ECS Task State Change", t["taskArn"], t) for t in tasks]


def instance_events(cluster, arns):
    if not arns:
        return []
    described = ecs.describe_container_instances(cluster=cluster, containerInstances=arns)["containerInstances"]
    bodies = []
    for i in described:
        detail = dict(i)
        detail["clusterArn"] = f"arn:aws:ecs:{REGION}:123456789012:cluster/{cluster}"
        bodies.append(envelope("ECS Container Instance State Change", i["containerInstanceArn"], detail))
    return bodies


def main():
    queue_url = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
    task_def = ecs.register_task_definition(
        family="log-shipper",
        containerDefinitions=[{"name": "shipper", "image": "fluent/fluent-bit", "cpu": 128, "memory": 128}],
    )["taskDefinition"]["taskDefinitionArn"]
    state = {}
    for cluster, count in CLUSTERS.items():
        ecs.create_cluster(clusterName=cluster)
        reservation = ec2.run_instances(ImageId="ami-12c6146b", MinCount=count, MaxCount=count, InstanceType="m5.large")
        instances = []
        for ec2_instance in reservation["Instances"]:
            document = json.dumps({"instanceId": ec2_instance["InstanceId"], "region": REGION})
            registered = ecs.register_container_instance(cluster=cluster, instanceIdentityDocument=document)
            instances.append(registered["containerInstance"]["containerInstanceArn"])
        started = ecs.start_task(cluster=cluster, taskDefinition=task_def, containerInstances=instances, startedBy="demo")
        tasks = [t["taskArn"] for t in started["tasks"]]
        publish(queue_url, instance_events(cluster, instances) + task_events(cluster, tasks))
        state[cluster] = {"instances": instances, "tasks": tasks}
    print(f"demo: {sum(CLUSTERS.values())} instances and tasks in {', '.join(CLUSTERS)}; events in {QUEUE}", flush=True)

    rng = random.Random(7)
    for tick in itertools.count(1):
        time.sleep(3)
        cluster = rng.choice(list(state))
        tasks = state[cluster]["tasks"]
        victim = tasks.pop(rng.randrange(len(tasks)))
        ecs.stop_task(cluster=cluster, task=victim, reason="demo churn")
        instance = ecs.describe_tasks(cluster=cluster, tasks=[victim])["tasks"][0]["containerInstanceArn"]
        started = ecs.start_task(cluster=cluster, taskDefinition=task_def, containerInstances=[instance], startedBy="demo")
        replacement = [t["taskArn"] for t in started["tasks"]]
        tasks.extend(replacement)
        bodies = task_events(cluster, [victim] + replacement)
        if tick % 10 == 0:
            drained = rng.choice(state[cluster]["instances"])
            ecs.update_container_instances_state(cluster=cluster, containerInstances=[drained], status="DRAINING")
            bodies += instance_events(cluster, [drained])
        publish(queue_url, bodies)


if __name__ == "__main__":
    main()
