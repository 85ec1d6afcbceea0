# Buckets and key, for the IAM roles and the Kubernetes layer (DVC remote URL, MLflow
# --artifacts-destination).

output "dvc_bucket_name" {
  description = "Name of the DVC remote bucket."
  value       = module.dvc_bucket.id
}

output "dvc_bucket_arn" {
  description = "ARN of the DVC remote bucket."
  value       = module.dvc_bucket.arn
}

output "mlflow_bucket_name" {
  description = "Name of the MLflow artifact bucket."
  value       = module.mlflow_bucket.id
}

output "mlflow_bucket_arn" {
  description = "ARN of the MLflow artifact bucket."
  value       = module.mlflow_bucket.arn
}

output "access_log_bucket_name" {
  description = "Bucket receiving the server access logs of both data buckets."
  value       = aws_s3_bucket.logs.id
}

output "kms_key_arn" {
  description = "KMS key of the data buckets; readers and writers need kms:Decrypt / kms:GenerateDataKey on it."
  value       = aws_kms_key.data.arn
}
