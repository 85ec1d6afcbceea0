# What the cluster and database modules need from the network.

output "vpc_id" {
  description = "ID of the VPC."
  value       = aws_vpc.this.id
}

output "vpc_cidr" {
  description = "IPv4 CIDR of the VPC."
  value       = aws_vpc.this.cidr_block
}

output "private_subnet_ids" {
  description = "Private subnets, one per AZ, in the order of availability_zones (EKS nodes, RDS)."
  value       = aws_subnet.private[*].id
}

output "public_subnet_ids" {
  description = "Public subnets, one per AZ (NAT gateways, internet-facing load balancers)."
  value       = aws_subnet.public[*].id
}

output "nat_public_ips" {
  description = "Elastic IPs the private subnets reach the internet from (for allow-lists elsewhere)."
  value       = aws_eip.nat[*].public_ip
}
