# blox's AWS plumbing: ECS events from EventBridge to an SQS queue with a dead-letter queue, and the
# IAM policies blox needs (README, "Running against AWS"). The same resources as
# deploy/cloudformation/blox.yaml.

data "aws_partition" "current" {}

locals {
  detail_types = ["ECS Task State Change", "ECS Container Instance State Change"]

  # Every cluster, or only those of cluster_arns.
  event_pattern = merge(
    { source = ["aws.ecs"], "detail-type" = local.detail_types },
    [for arns in [var.cluster_arns] : { detail = { clusterArn = arns } } if length(arns) > 0]...
  )

  # What blox needs to mirror cluster state.
  read_ecs_actions = [
    "ecs:ListClusters",
    "ecs:ListContainerInstances",
    "ecs:DescribeContainerInstances",
    "ecs:ListTasks",
    "ecs:DescribeTasks",
  ]
  read_sqs_actions = [
    "sqs:GetQueueUrl",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
  ]
  # What the daemon scheduler needs besides.
  scheduler_ecs_actions = [
    "ecs:DescribeClusters",
    "ecs:DescribeTaskDefinition",
    "ecs:StartTask",
    "ecs:StopTask",
  ]
  scheduler_cloudwatch_actions = ["cloudwatch:DescribeAlarms"]

  pass_role_statements = [for arns in [var.pass_role_arns] : {
    Sid       = "PassDaemonRoles"
    Effect    = "Allow"
    Action    = "iam:PassRole"
    Resource  = arns
    Condition = { StringEquals = { "iam:PassedToService" = "ecs-tasks.amazonaws.com" } }
  } if length(arns) > 0]
}

resource "aws_sqs_queue" "dead_letter" {
  name                      = var.dead_letter_queue_name
  message_retention_seconds = var.dead_letter_retention_seconds
  sqs_managed_sse_enabled   = true
  tags                      = var.tags
}

resource "aws_sqs_queue" "events" {
  name                      = var.queue_name
  message_retention_seconds = var.message_retention_seconds
  # SSE-SQS: EventBridge can send to it (a queue encrypted with the AWS-managed KMS key it cannot).
  sqs_managed_sse_enabled = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dead_letter.arn
    maxReceiveCount     = var.max_receive_count
  })
  tags = var.tags
}

resource "aws_cloudwatch_event_rule" "ecs" {
  name           = var.rule_name
  description    = "ECS task and container-instance state changes, for blox."
  event_bus_name = "default"
  event_pattern  = jsonencode(local.event_pattern)
  tags           = var.tags
}

resource "aws_cloudwatch_event_target" "queue" {
  rule           = aws_cloudwatch_event_rule.ecs.name
  event_bus_name = "default"
  target_id      = "blox-queue"
  arn            = aws_sqs_queue.events.arn
}

resource "aws_sqs_queue_policy" "events" {
  queue_url = aws_sqs_queue.events.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "EventBridgeSendsEcsEvents"
      Effect    = "Allow"
      Principal = { Service = "events.amazonaws.com" }
      Action    = "sqs:SendMessage"
      Resource  = aws_sqs_queue.events.arn
      Condition = { ArnEquals = { "aws:SourceArn" = aws_cloudwatch_event_rule.ecs.arn } }
    }]
  })
}

resource "aws_iam_policy" "read" {
  name        = var.read_policy_name
  description = "blox reads ECS cluster state and takes ECS events from its queue."
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      { Sid = "EcsRead", Effect = "Allow", Action = local.read_ecs_actions, Resource = "*" },
      { Sid = "EventQueue", Effect = "Allow", Action = local.read_sqs_actions, Resource = aws_sqs_queue.events.arn },
    ]
  })
  tags = var.tags
}

resource "aws_iam_policy" "scheduler" {
  name        = var.scheduler_policy_name
  description = "blox's daemon scheduler starts and stops tasks and reads deployment alarms."
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(local.pass_role_statements, [
      { Sid = "EcsSchedule", Effect = "Allow", Action = local.scheduler_ecs_actions, Resource = "*" },
      { Sid = "DeploymentAlarms", Effect = "Allow", Action = local.scheduler_cloudwatch_actions, Resource = "*" },
    ])
  })
  tags = var.tags
}
