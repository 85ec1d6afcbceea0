# Connection facts for the MLflow and Prefect deployments and the External Secrets role.

output "address" {
  description = "DNS name of the instance (private)."
  value       = aws_db_instance.this.address
}

output "port" {
  description = "PostgreSQL port."
  value       = aws_db_instance.this.port
}

output "endpoint" {
  description = "host:port of the instance."
  value       = aws_db_instance.this.endpoint
}

output "database_name" {
  description = "Database created with the instance (MLflow's)."
  value       = aws_db_instance.this.db_name
}

output "master_username" {
  description = "Master user name (its password lives only in the master-user secret)."
  value       = aws_db_instance.this.username
}

output "master_user_secret_arn" {
  description = "Secrets Manager secret (JSON username/password) that RDS manages and rotates."
  value       = aws_db_instance.this.master_user_secret[0].secret_arn
}

output "kms_key_arn" {
  description = "KMS key encrypting the instance and its master-user secret (readers of the secret need kms:Decrypt)."
  value       = aws_kms_key.db.arn
}

output "security_group_id" {
  description = "Security group of the instance."
  value       = aws_security_group.this.id
}
