# Secret ARNs, for the External Secrets role and the Kubernetes layer.

output "secret_arns" {
  description = "ARN of each secret, keyed by its name under the prefix (e.g. mlflow/server)."
  value       = { for key, secret in aws_secretsmanager_secret.this : key => secret.arn }
}

output "secret_names" {
  description = "Full name of each secret (PREFIX/NAME), what an ExternalSecret's remoteRef key names."
  value       = { for key, secret in aws_secretsmanager_secret.this : key => secret.name }
}

output "kms_key_arn" {
  description = "KMS key encrypting the secrets (readers need kms:Decrypt through Secrets Manager)."
  value       = aws_kms_key.secrets.arn
}
