output "queue_url" {
  description = "blox server --queue URL (or BLOX_QUEUE)."
  value       = aws_sqs_queue.events.url
}

output "queue_name" {
  value = aws_sqs_queue.events.name
}

output "queue_arn" {
  value = aws_sqs_queue.events.arn
}

output "dead_letter_queue_url" {
  value = aws_sqs_queue.dead_letter.url
}

output "rule_arn" {
  value = aws_cloudwatch_event_rule.ecs.arn
}

output "read_policy_arn" {
  description = "Attach to blox's role (mirroring)."
  value       = aws_iam_policy.read.arn
}

output "scheduler_policy_arn" {
  description = "Attach to blox's role as well to run the daemon scheduler."
  value       = aws_iam_policy.scheduler.arn
}

output "service_name" {
  description = "The ECS service running blox, if var.service is set."
  value       = one(aws_ecs_service.blox[*].name)
}

output "file_system_id" {
  description = "blox's store (an EFS file system), if var.service is set."
  value       = one(aws_efs_file_system.store[*].id)
}
