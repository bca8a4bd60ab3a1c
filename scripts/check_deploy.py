#!/usr/bin/env python3
"""Static checks of deploy/: the CloudFormation template, the Terraform module and the README agree.

Run by crates/blox/tests/deploy.rs with the test venv's python (cfn-lint and python-hcl2 installed
by scripts/setup-test-env.sh): `python scripts/check_deploy.py WORKSPACE_ROOT`. Prints every failed
check and exits 1 if there is any.

No Terraform or OpenTofu binary can be installed from the package registries here, and `validate`
also needs the AWS provider from the Terraform registry, so the module is checked this way instead:
every file parses as HCL2 (python-hcl2), every `var.`, `local.`, `data.` and resource reference
names something declared, counted resources are always indexed (and only they), and the module has
the template's resources, parameters (with the same defaults) and outputs.
"""

import re
import sys
from pathlib import Path

import hcl2
from cfnlint.decode import decode

DETAIL_TYPES = {"ECS Task State Change", "ECS Container Instance State Change"}

failures: list[str] = []


def check(ok: bool, what: str) -> None:
    if not ok:
        failures.append(what)


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# --- README: "Running against AWS" lists the permissions --------------------------------------


def readme_permissions(readme: Path) -> tuple[set[str], set[str], set[str]]:
    """(read, scheduler, conditional) actions of the README's "Running against AWS" section."""
    text = readme.read_text()
    start = text.index("## Running against AWS")
    # The paragraph before the table of flags.
    section = " ".join(text[start : text.index("| flag |", start)].split())
    actions_at = [(m.start(), m.group(1)) for m in re.finditer(r"`([a-z0-9]+:[A-Za-z]+)`", section)]
    scheduler_at = section.index("the daemon scheduler also")
    conditional_at = section.index("`iam:PassRole`")
    read = {a for at, a in actions_at if at < scheduler_at}
    scheduler = {a for at, a in actions_at if scheduler_at <= at < conditional_at}
    conditional = {a for at, a in actions_at if at >= conditional_at}
    return read, scheduler, conditional


# --- CloudFormation -----------------------------------------------------------------------------


def statements_actions(statements) -> set[str]:
    actions: set[str] = set()
    for statement in statements:
        action = statement["Action"]
        actions.update([action] if isinstance(action, str) else action)
    return actions


def check_template(path: Path, read: set[str], scheduler: set[str], conditional: set[str]):
    template, matches = decode(str(path))
    check(template is not None and not matches, f"{path} does not parse: {matches}")
    if template is None:
        return None
    resources = template["Resources"]

    def typed(name: str, kind: str) -> dict:
        resource = resources.get(name, {})
        check(resource.get("Type") == kind, f"the template has no {kind} {name}")
        return resource.get("Properties", {})

    dlq = typed("DeadLetterQueue", "AWS::SQS::Queue")
    queue = typed("Queue", "AWS::SQS::Queue")
    redrive = queue.get("RedrivePolicy", {})
    check(
        redrive.get("deadLetterTargetArn") == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
        and "maxReceiveCount" in redrive,
        "Queue's RedrivePolicy sends to DeadLetterQueue after maxReceiveCount",
    )
    check(
        queue.get("MessageRetentionPeriod") == {"Ref": "MessageRetentionSeconds"}
        and dlq.get("MessageRetentionPeriod") == {"Ref": "DeadLetterRetentionSeconds"},
        "both queues' retention comes from the parameters",
    )

    policy = typed("QueuePolicy", "AWS::SQS::QueuePolicy")
    statements = policy.get("PolicyDocument", {}).get("Statement", [])
    check(
        any(
            s.get("Principal") == {"Service": "events.amazonaws.com"}
            and s.get("Action") == "sqs:SendMessage"
            and s.get("Condition", {}).get("ArnEquals", {}).get("aws:SourceArn")
            == {"Fn::GetAtt": ["Rule", "Arn"]}
            for s in statements
        ),
        "QueuePolicy lets the rule (events.amazonaws.com, aws:SourceArn) send to the queue",
    )
    check(policy.get("Queues") == [{"Ref": "Queue"}], "QueuePolicy is the queue's")

    rule = typed("Rule", "AWS::Events::Rule")
    pattern = rule.get("EventPattern", {})
    condition, every, some = pattern.get("Fn::If", [None, {}, {}])
    check(condition == "AllClusters", "the event pattern is chosen by AllClusters")
    for branch in (every, some):
        check(branch.get("source") == ["aws.ecs"], f"the rule matches source aws.ecs: {branch}")
        check(set(branch.get("detail-type", [])) == DETAIL_TYPES, f"the rule's detail types: {branch}")
    check("detail" not in every, "with every cluster, the pattern has no detail")
    check(
        some.get("detail") == {"clusterArn": {"Ref": "ClusterArns"}},
        "with ClusterArns, the pattern matches detail.clusterArn",
    )
    check(
        rule.get("Targets") == [{"Id": "blox-queue", "Arn": {"Fn::GetAtt": ["Queue", "Arn"]}}],
        "the rule's one target is the queue",
    )

    read_policy = typed("ReadPolicy", "AWS::IAM::ManagedPolicy")
    template_read = statements_actions(read_policy["PolicyDocument"]["Statement"])
    check(template_read == read, f"ReadPolicy's actions {sorted(template_read)} are the README's {sorted(read)}")
    scheduler_policy = typed("SchedulerPolicy", "AWS::IAM::ManagedPolicy")
    condition, with_pass, without_pass = scheduler_policy["PolicyDocument"]["Statement"]["Fn::If"]
    check(condition == "PassRoles", "SchedulerPolicy's iam:PassRole depends on PassRoles")
    template_scheduler = statements_actions(without_pass)
    check(
        template_scheduler == scheduler,
        f"SchedulerPolicy's actions {sorted(template_scheduler)} are the README's {sorted(scheduler)}",
    )
    check(
        statements_actions(with_pass) == scheduler | conditional,
        f"SchedulerPolicy with PassRoleArns adds {sorted(conditional)}",
    )
    for name in ("ReadPolicy", "SchedulerPolicy"):
        check(
            {"Ref": name} in resources.get("TaskRole", {}).get("Properties", {}).get("ManagedPolicyArns", []),
            f"the service's task role has {name}",
        )

    outputs = template.get("Outputs", {})
    for name in ("QueueUrl", "ReadPolicyArn", "SchedulerPolicyArn"):
        check(name in outputs, f"the template outputs {name}")
    check(outputs.get("QueueUrl", {}).get("Value") == {"Ref": "Queue"}, "QueueUrl is the queue's URL")
    return template


# --- Terraform ----------------------------------------------------------------------------------


def unquote(value):
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [unquote(v) for v in value]
    return value


def blocks(module: dict, kind: str):
    """(labels, body) of every block of `kind` (resource, data, variable, output, locals)."""
    for block in module.get(kind, []):
        if kind == "locals":
            yield (), block
            continue
        for first, rest in block.items():
            if kind in ("resource", "data"):
                for second, body in rest.items():
                    yield (unquote(first), unquote(second)), body
            else:
                yield (unquote(first),), rest


def all_strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from all_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from all_strings(v)


def check_module(directory: Path, template, read: set[str], scheduler: set[str], conditional: set[str]):
    files = sorted(directory.glob("*.tf"))
    check(bool(files), f"no .tf file in {directory}")
    module: dict = {}
    for path in files:
        try:
            with path.open() as f:
                parsed = hcl2.load(f)
        except Exception as err:  # noqa: BLE001 - the parser's error names the line
            failures.append(f"{path} is not valid HCL2: {err}")
            continue
        for kind, items in parsed.items():
            module.setdefault(kind, []).extend(items)

    variables = {labels[0]: body for labels, body in blocks(module, "variable")}
    outputs = {labels[0]: body for labels, body in blocks(module, "output")}
    locals_: dict = {}
    for _, body in blocks(module, "locals"):
        locals_.update({k: v for k, v in body.items() if not k.startswith("__")})
    resources = {labels: body for labels, body in blocks(module, "resource")}
    data = {labels: body for labels, body in blocks(module, "data")}

    # References: everything named is declared; counted resources are indexed, others are not.
    counted = {labels for labels, body in resources.items() if "count" in body or "for_each" in body}
    for labels, body in list(resources.items()) + [(("output", k), v) for k, v in outputs.items()] + [
        (("locals",), locals_)
    ]:
        for text in all_strings({k: v for k, v in body.items() if k != "depends_on"}):
            for name in re.findall(r"\bvar\.([A-Za-z_][A-Za-z0-9_]*)", text):
                check(name in variables, f"{'.'.join(labels)}: var.{name} is not declared")
            for name in re.findall(r"\blocal\.([A-Za-z_][A-Za-z0-9_]*)", text):
                check(name in locals_, f"{'.'.join(labels)}: local.{name} is not defined")
            for kind, name in re.findall(r"\bdata\.([a-z0-9_]+)\.([a-z0-9_]+)", text):
                check((kind, name) in data, f"{'.'.join(labels)}: data.{kind}.{name} is not declared")
            for kind, name, index in re.findall(
                r"(?<![.\w])(aws_[a-z0-9_]+)\.([a-z0-9_]+)(\[)?", text
            ):
                ref = (kind, name)
                check(ref in resources, f"{'.'.join(labels)}: {kind}.{name} is not declared")
                if ref in resources and ref != labels:
                    check(
                        bool(index) == (ref in counted),
                        f"{'.'.join(labels)}: {kind}.{name} is "
                        + ("counted and must be indexed" if ref in counted else "not counted: no index"),
                    )

        for text in all_strings(body.get("depends_on", [])):
            for kind, name in re.findall(r"(aws_[a-z0-9_]+)\.([a-z0-9_]+)", text):
                check((kind, name) in resources, f"{'.'.join(labels)}: depends on {kind}.{name}, undeclared")

    for kind, name in [
        ("aws_sqs_queue", "events"),
        ("aws_sqs_queue", "dead_letter"),
        ("aws_sqs_queue_policy", "events"),
        ("aws_cloudwatch_event_rule", "ecs"),
        ("aws_cloudwatch_event_target", "queue"),
        ("aws_iam_policy", "read"),
        ("aws_iam_policy", "scheduler"),
    ]:
        check((kind, name) in resources, f"the module has no {kind}.{name}")
    queue = resources.get(("aws_sqs_queue", "events"), {})
    check(
        "aws_sqs_queue.dead_letter.arn" in str(queue.get("redrive_policy"))
        and "var.max_receive_count" in str(queue.get("redrive_policy")),
        "the queue's redrive policy sends to the dead-letter queue after max_receive_count",
    )
    target = resources.get(("aws_cloudwatch_event_target", "queue"), {})
    check(target.get("arn") == "${aws_sqs_queue.events.arn}", "the rule's target is the queue")
    queue_policy = str(resources.get(("aws_sqs_queue_policy", "events"), {}).get("policy"))
    check(
        "events.amazonaws.com" in queue_policy
        and "sqs:SendMessage" in queue_policy
        and "aws_cloudwatch_event_rule.ecs.arn" in queue_policy,
        "the queue policy lets the rule (events.amazonaws.com, aws:SourceArn) send",
    )

    check(set(unquote(locals_.get("detail_types", []))) == DETAIL_TYPES, "the module's detail types")
    check('source = [\\"aws.ecs\\"]' in str(locals_.get("event_pattern")) or 'source = ["aws.ecs"]' in str(
        locals_.get("event_pattern")
    ), "the module's rule matches source aws.ecs")
    module_read = set(unquote(locals_.get("read_ecs_actions", []) + locals_.get("read_sqs_actions", [])))
    check(module_read == read, f"the module's read actions {sorted(module_read)} are the README's")
    module_scheduler = set(
        unquote(locals_.get("scheduler_ecs_actions", []) + locals_.get("scheduler_cloudwatch_actions", []))
    )
    check(module_scheduler == scheduler, f"the module's scheduler actions {sorted(module_scheduler)} are the README's")
    passes = set(re.findall(r'Action = \\?"([a-z]+:[A-Za-z]+)', str(locals_.get("pass_role_statements"))))
    check(passes == conditional, f"the module's conditional actions {sorted(passes)} are the README's")

    if template is not None:
        # The template's parameters (but the service's, an object in the module) are variables,
        # with the same defaults; its outputs are outputs.
        service_group = next(
            g["Parameters"]
            for g in template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
            if "service" in g["Label"]["default"]
        )
        for name, parameter in template["Parameters"].items():
            if name in service_group:
                continue
            variable = variables.get(snake(name))
            check(variable is not None, f"the module has no variable {snake(name)} (the template's {name})")
            if variable is None:
                continue
            default, expected = unquote(variable.get("default")), parameter.get("Default")
            if parameter["Type"] == "CommaDelimitedList":
                expected = [] if expected == "" else expected.split(",")
            elif parameter["Type"] == "Number":
                expected = int(expected)
            check(default == expected, f"{snake(name)} defaults to {default!r}, {name} to {expected!r}")
        for name in template["Outputs"]:
            check(snake(name) in outputs, f"the module has no output {snake(name)} (the template's {name})")
        check(set(outputs) == {snake(n) for n in template["Outputs"]}, "the module's outputs are the template's")


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    read, scheduler, conditional = readme_permissions(root / "README.md")
    check(len(read) == 9 and len(scheduler) == 5, f"README's permissions: {read} / {scheduler}")
    check(conditional == {"iam:PassRole"}, f"README's conditional permissions: {conditional}")
    template = check_template(root / "deploy/cloudformation/blox.yaml", read, scheduler, conditional)
    check_module(root / "deploy/terraform", template, read, scheduler, conditional)
    for failure in failures:
        print(f"FAIL {failure}")
    if failures:
        return 1
    print("deploy/ checks passed: template, module and README agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
