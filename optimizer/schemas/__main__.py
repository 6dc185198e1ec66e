from optimizer.schemas import write_schemas

write_schemas()
