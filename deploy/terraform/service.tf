# Optional: blox itself, one Fargate task with its store on EFS (var.service).

locals {
  service_count = var.service == null ? 0 : 1
  # The image's user owns the store's directory.
  blox_uid = 10001
  # The region of the queue, which is the provider's.
  region = split(":", aws_sqs_queue.events.arn)[3]
}

resource "aws_cloudwatch_log_group" "blox" {
  count             = local.service_count
  name              = "/ecs/${var.queue_name}/blox"
  retention_in_days = var.service.log_retention_days
  tags              = var.tags
}

resource "aws_security_group" "service" {
  count       = local.service_count
  name_prefix = "blox-"
  description = "blox API"
  vpc_id      = var.service.vpc_id
  tags        = var.tags

  ingress {
    description = "blox API"
    protocol    = "tcp"
    from_port   = 2000
    to_port     = 2000
    cidr_blocks = [var.service.allowed_cidr]
  }

  egress {
    description = "AWS APIs, ECR and EFS"
    protocol    = "-1"
    from_port   = 0
    to_port     = 0
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_security_group" "store" {
  count       = local.service_count
  name_prefix = "blox-store-"
  description = "blox store (NFS from the blox service only)"
  vpc_id      = var.service.vpc_id
  tags        = var.tags

  ingress {
    description     = "NFS from blox"
    protocol        = "tcp"
    from_port       = 2049
    to_port         = 2049
    security_groups = [aws_security_group.service[0].id]
  }
}

resource "aws_efs_file_system" "store" {
  count            = local.service_count
  encrypted        = true
  performance_mode = "generalPurpose"
  throughput_mode  = "elastic"
  tags             = merge(var.tags, { Name = "blox" })
}

resource "aws_efs_backup_policy" "store" {
  count          = local.service_count
  file_system_id = aws_efs_file_system.store[0].id

  backup_policy {
    status = "ENABLED"
  }
}

resource "aws_efs_mount_target" "store" {
  for_each        = toset(var.service == null ? [] : var.service.subnet_ids)
  file_system_id  = aws_efs_file_system.store[0].id
  subnet_id       = each.value
  security_groups = [aws_security_group.store[0].id]
}

resource "aws_efs_access_point" "store" {
  count          = local.service_count
  file_system_id = aws_efs_file_system.store[0].id
  tags           = var.tags

  posix_user {
    uid = local.blox_uid
    gid = local.blox_uid
  }

  root_directory {
    path = "/blox"
    creation_info {
      owner_uid   = local.blox_uid
      owner_gid   = local.blox_uid
      permissions = "0750"
    }
  }
}

resource "aws_iam_role" "task" {
  count       = local.service_count
  name_prefix = "blox-task-"
  tags        = var.tags
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Principal = { Service = "ecs-tasks.amazonaws.com" }, Action = "sts:AssumeRole" }]
  })
}

resource "aws_iam_role_policy_attachment" "task_read" {
  count      = local.service_count
  role       = aws_iam_role.task[0].name
  policy_arn = aws_iam_policy.read.arn
}

resource "aws_iam_role_policy_attachment" "task_scheduler" {
  count      = local.service_count
  role       = aws_iam_role.task[0].name
  policy_arn = aws_iam_policy.scheduler.arn
}

resource "aws_iam_role_policy" "task_store" {
  count = local.service_count
  name  = "blox-store"
  role  = aws_iam_role.task[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Action    = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
      Resource  = aws_efs_file_system.store[0].arn
      Condition = { StringEquals = { "elasticfilesystem:AccessPointArn" = aws_efs_access_point.store[0].arn } }
    }]
  })
}

resource "aws_iam_role" "execution" {
  count       = local.service_count
  name_prefix = "blox-exec-"
  tags        = var.tags
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Principal = { Service = "ecs-tasks.amazonaws.com" }, Action = "sts:AssumeRole" }]
  })
}

resource "aws_iam_role_policy_attachment" "execution" {
  count      = local.service_count
  role       = aws_iam_role.execution[0].name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

resource "aws_iam_role_policy" "execution_tokens" {
  count = local.service_count
  name  = "blox-tokens"
  role  = aws_iam_role.execution[0].id
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = "secretsmanager:GetSecretValue", Resource = var.service.auth_tokens_secret_arn }]
  })
}

resource "aws_ecs_task_definition" "blox" {
  count                    = local.service_count
  family                   = "blox"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.service.cpu
  memory                   = var.service.memory
  task_role_arn            = aws_iam_role.task[0].arn
  execution_role_arn       = aws_iam_role.execution[0].arn
  tags                     = var.tags

  volume {
    name = "store"
    efs_volume_configuration {
      file_system_id     = aws_efs_file_system.store[0].id
      transit_encryption = "ENABLED"
      authorization_config {
        access_point_id = aws_efs_access_point.store[0].id
        iam             = "ENABLED"
      }
    }
  }

  container_definitions = jsonencode([{
    name      = "blox"
    image     = var.service.image
    essential = true
    # The token file is written from the secret to the container's own /tmp (mode 600), then blox
    # replaces the shell.
    entryPoint = ["/bin/sh", "-c"]
    command = [
      "umask 077 && printf '%s\\n' \"$BLOX_TOKENS\" > /tmp/blox-tokens && unset BLOX_TOKENS && exec blox server --auth-token-file /tmp/blox-tokens"
    ]
    portMappings = [{ containerPort = 2000, protocol = "tcp" }]
    environment = [
      { name = "BLOX_QUEUE", value = aws_sqs_queue.events.url },
      { name = "BLOX_STORE", value = "log:/data/store" },
      { name = "BLOX_LISTEN", value = "0.0.0.0:2000" },
      { name = "BLOX_LOG_FORMAT", value = "json" },
      { name = "AWS_REGION", value = local.region },
    ]
    secrets     = [{ name = "BLOX_TOKENS", valueFrom = var.service.auth_tokens_secret_arn }]
    mountPoints = [{ sourceVolume = "store", containerPath = "/data" }]
    healthCheck = { command = ["CMD", "blox-healthcheck"], interval = 15, timeout = 5, retries = 3, startPeriod = 60 }
    # blox's --shutdown-grace is 10 s.
    stopTimeout = 30
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        "awslogs-group"         = aws_cloudwatch_log_group.blox[0].name
        "awslogs-region"        = local.region
        "awslogs-stream-prefix" = "blox"
      }
    }
  }])
}

resource "aws_ecs_service" "blox" {
  count           = local.service_count
  name            = "blox"
  cluster         = var.service.cluster
  task_definition = aws_ecs_task_definition.blox[0].arn
  launch_type     = "FARGATE"
  # One writer of the store at a time: the old task stops before the new one starts.
  desired_count                      = 1
  deployment_minimum_healthy_percent = 0
  deployment_maximum_percent         = 100
  tags                               = var.tags

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.service.subnet_ids
    security_groups  = [aws_security_group.service[0].id]
    assign_public_ip = var.service.assign_public_ip
  }

  depends_on = [aws_efs_mount_target.store]
}
