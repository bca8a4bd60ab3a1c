variable "queue_name" {
  description = "The SQS queue blox reads (`blox server --queue NAME`)."
  type        = string
  default     = "blox-events"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,80}$", var.queue_name))
    error_message = "An SQS queue name: 1 to 80 letters, digits, - and _."
  }
}

variable "dead_letter_queue_name" {
  description = "Where messages go after max_receive_count receives without a delete."
  type        = string
  default     = "blox-events-dlq"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,80}$", var.dead_letter_queue_name))
    error_message = "An SQS queue name: 1 to 80 letters, digits, - and _."
  }
}

variable "message_retention_seconds" {
  description = "How long the queue keeps an event blox has not taken (60 s to 14 days; 4 days by default)."
  type        = number
  default     = 345600

  validation {
    condition     = var.message_retention_seconds >= 60 && var.message_retention_seconds <= 1209600
    error_message = "SQS keeps a message 60 to 1209600 seconds."
  }
}

variable "dead_letter_retention_seconds" {
  description = "How long the dead-letter queue keeps a message (14 days by default, SQS's longest)."
  type        = number
  default     = 1209600

  validation {
    condition     = var.dead_letter_retention_seconds >= 60 && var.dead_letter_retention_seconds <= 1209600
    error_message = "SQS keeps a message 60 to 1209600 seconds."
  }
}

variable "max_receive_count" {
  description = "Receives of one message without a delete before SQS moves it to the dead-letter queue."
  type        = number
  default     = 5

  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000
    error_message = "max_receive_count is 1 to 1000."
  }
}

variable "rule_name" {
  description = "The EventBridge rule on the default event bus."
  type        = string
  default     = "blox-ecs-events"
}

variable "cluster_arns" {
  description = "Only the events of these cluster ARNs; empty: every cluster of the account and region."
  type        = list(string)
  default     = []
}

variable "read_policy_name" {
  description = "The IAM policy with what blox needs to mirror cluster state."
  type        = string
  default     = "blox-read"
}

variable "scheduler_policy_name" {
  description = "The IAM policy with what the daemon scheduler needs besides (attach both to run it)."
  type        = string
  default     = "blox-scheduler"
}

variable "pass_role_arns" {
  description = "The task and execution roles of the daemons' task definitions, if any: StartTask needs iam:PassRole on them (added to the scheduler policy)."
  type        = list(string)
  default     = []
}

variable "service" {
  description = "Optional: run blox as a Fargate service in this ECS cluster, its store on EFS. null: no service."
  type = object({
    # The ECS cluster (name or ARN) to run blox in.
    cluster = string
    # blox's container image (built from the repository's Dockerfile and pushed to ECR).
    image  = string
    vpc_id = string
    # Subnets for the task and the EFS mount targets (two or more availability zones).
    subnet_ids = list(string)
    # A Secrets Manager secret whose value is blox's token file (`ROLE TOKEN` lines).
    auth_tokens_secret_arn = string
    # Who may reach the API on port 2000.
    allowed_cidr       = optional(string, "10.0.0.0/8")
    assign_public_ip   = optional(bool, false)
    cpu                = optional(number, 512)
    memory             = optional(number, 1024)
    log_retention_days = optional(number, 30)
  })
  default = null
}

variable "tags" {
  description = "Tags for every resource that takes them."
  type        = map(string)
  default     = {}
}
