# Role ARNs, for the eks.amazonaws.com/role-arn annotation of each service account.

output "role_arns" {
  description = "IRSA role ARN per service account key (training, mlflow, prefect_worker, external_secrets, autoscaler)."
  value       = { for key, role in aws_iam_role.this : key => role.arn }
}

output "service_accounts" {
  description = "Namespace and name of the service account each role trusts."
  value       = var.service_accounts
}
